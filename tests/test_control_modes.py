"""The mode machine alone: black start from the battery step by step, an island that
collapses, a grid that comes back first, and what needs a PCC breaker."""

from __future__ import annotations

from gateway.control.config import ControlConfig
from gateway.control.modes import ModeMachine


def machine(**emergency: object) -> ModeMachine:
    return ModeMachine(ControlConfig.model_validate(
        {"emergency": {"pcc_breaker": "pcc", "step_delay_s": 1.0, "reconnect_delay_s": 5.0,
                       **emergency}}))


def test_dark_site_black_starts_from_the_battery_in_order() -> None:
    m = machine()
    closed: dict[str, bool | None] = {"pcc": True}
    opened: dict[str, bool | None] = {"pcc": False}
    assert m.step(0.0, False, closed, forming=False) == [("pcc", "trip", True)]
    assert (m.mode, m.stage, m.source) == ("black_start", -2, "battery")
    assert m.step(2.0, False, closed, forming=False, loads_off=True) == []
    assert m.stage == -2  # the PCC still reports closed
    m.step(3.0, False, opened, forming=False, loads_off=False)
    assert m.stage == -2  # a load still reports on
    m.step(4.0, False, opened, forming=False, loads_off=True)
    assert m.stage == -1  # now the battery may form
    m.step(6.0, False, opened, forming=False, loads_off=True)
    assert m.stage == -1  # waiting for it to form
    m.step(7.0, False, opened, forming=True, loads_off=True)
    assert m.stage == 0  # critical loads
    m.step(8.5, False, opened, forming=True, loads_off=False)
    assert m.stage == 1  # + essential
    m.step(10.0, False, opened, forming=True, loads_off=False)
    assert m.mode == "island" and m.was_forming


def test_collapsed_island_black_starts_and_a_returning_grid_takes_over() -> None:
    m = machine()
    opened: dict[str, bool | None] = {"pcc": False}
    assert m.step(0.0, False, {"pcc": True}, forming=True) == [("pcc", "trip", True)]
    assert m.mode == "island"
    m.step(1.0, False, opened, forming=True)
    assert m.step(2.0, False, opened, forming=False) == [("pcc", "trip", True)]
    assert (m.mode, m.source, m.reason) == ("black_start", "battery", "the island collapsed")
    m.step(4.0, False, opened, forming=False)
    assert m.stage == -1  # an empty battery cannot form: it waits here
    m.step(5.0, True, opened, forming=False)
    m.step(10.0, True, opened, forming=False)  # healthy for reconnect_delay_s
    assert (m.mode, m.source, m.stage) == ("black_start", "grid", -1)
    assert m.step(11.0, True, opened, forming=False) == [("pcc", "close", True)]


def test_reconnection_waits_for_the_battery_to_leave_grid_forming() -> None:
    m = machine(reconnect_delay_s=0.0)
    m.request("island", 0.0, "drill")
    m.step(1.0, True, {"pcc": False}, forming=True)
    assert m.mode == "reconnect"
    assert m.step(2.0, True, {"pcc": False}, forming=True) == [("pcc", "close", True)]
    m.step(5.0, True, {"pcc": True}, forming=True)
    assert m.stage == 0  # closed, but the battery still forms
    m.step(6.0, True, {"pcc": True}, forming=False)
    assert m.stage == 1


def test_black_start_from_the_battery_needs_a_pcc_breaker() -> None:
    m = ModeMachine(ControlConfig())
    assert "PCC breaker" in (m.refuse("black_start", grid_ok=False) or "")
    assert m.refuse("black_start", grid_ok=True) is None
    assert machine().refuse("black_start", grid_ok=False) is None


def test_an_island_an_operator_asked_for_stays_until_an_operator_reconnects() -> None:
    cfg = ControlConfig.model_validate({"emergency": {"pcc_breaker": "pcc",
                                                      "reconnect_delay_s": 1.0}})
    m = ModeMachine(cfg)
    assert m.request("island", 0.0, "operator: drill", operator=True) == [("pcc", "trip", True)]
    for t in range(1, 30):  # the grid is healthy all along
        m.step(float(t), True, {"pcc": False}, True)
    assert m.mode == "island" and m.held
    auto = ModeMachine(cfg)
    auto.request("island", 0.0, "grid lost")
    for t in range(1, 5):
        auto.step(float(t), True, {"pcc": False}, True)
    assert auto.mode == "reconnect"
