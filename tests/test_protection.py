"""Protection on every sample: thresholds, delays, actions, reset; stale critical readings;
alarms and audit survive a restart; the mode machine's reconnection sequence."""

from __future__ import annotations

from pathlib import Path

from control_fakes import DEFAULT_DEVICES, T0, normal_values, site_config, site_state

from gateway.control.alarms import ControlStore
from gateway.control.config import ControlConfig
from gateway.control.modes import ModeMachine
from gateway.control.protection import Protection


def make(tmp_path: Path | None = None, **prot: object
         ) -> tuple[Protection, list[tuple[str, str, object]], list[str], dict[str, str]]:
    cfg = site_config(control={"protection": prot})
    assert cfg.control is not None
    state = site_state(cfg, normal_values())
    writes: list[tuple[str, str, object]] = []
    losses: list[str] = []
    lockouts: dict[str, str] = {}
    store = ControlStore(tmp_path / "c.sqlite" if tmp_path else None)
    store.open()
    p = Protection(cfg, cfg.control.protection, state, store,
                   lambda d, pt, v: writes.append((d, pt, v)), lockouts, losses.append)
    p.attach()
    return p, writes, losses, lockouts


def test_cell_over_temperature_zeroes_the_battery_at_once_and_releases_after_reset() -> None:
    p, writes, _, lockouts = make(reset_after_s=5.0)
    p.state.update("bat", {"cell_temp_max_c": 57.0}, T0 + 1)
    assert writes == [("bat", "p_set_kw", 0.0)]
    assert "bat" in lockouts and p.store.is_active("bat", "cell_over_temperature")
    assert len(p.latencies_ms) == 1
    p.state.update("bat", {"cell_temp_max_c": 50.0}, T0 + 2)
    assert "bat" in lockouts  # fine, but not for reset_after_s yet
    p.state.update("bat", {"cell_temp_max_c": 49.0}, T0 + 8)
    assert "bat" not in lockouts and not p.store.is_active("bat", "cell_over_temperature")
    assert len(writes) == 1


def test_delay_must_elapse_before_acting() -> None:
    p, writes, _, _ = make(current_delay_s=1.0, over_current_pct=100.0)
    p.state.update("ev1", {"connected": True}, T0)
    p.state.update("meter", {"i_l1_a": 70.0}, T0 + 1)
    assert writes == []
    p.state.update("meter", {"i_l1_a": 71.0}, T0 + 1.5)
    assert writes == []
    p.state.update("meter", {"i_l1_a": 72.0}, T0 + 2.1)
    assert sorted(writes) == [("ev1", "p_set_kw", 0.0), ("ev2", "p_set_kw", 0.0)]
    p.state.update("meter", {"i_l1_a": 10.0}, T0 + 3)  # a dip resets the delay clock


def test_loss_of_grid_at_the_pcc_calls_for_islanding() -> None:
    p, _, losses, _ = make()
    p.state.update("meter", {"v_v": 0.0, "f_hz": 0.0}, T0 + 1)
    assert "under voltage" in losses[0] and "under frequency" in losses[1]
    assert p.store.is_active("meter", "under_voltage")
    p.state.update("meter", {"f_hz": 52.0, "v_v": 230.0}, T0 + 2)
    assert p.store.is_active("meter", "over_frequency")


def test_stale_critical_reading_raises_and_clears_an_alarm() -> None:
    p, _, _, _ = make(stale_after_s=2.0)
    assert p.check_stale(T0 + 1) == []
    assert set(p.check_stale(T0 + 5)) == {"meter", "bat"}
    assert p.store.is_active("meter", "stale")
    p.state.update("meter", {"p_kw": 1.0}, T0 + 5)
    p.check_stale(T0 + 5.5)
    assert not p.store.is_active("meter", "stale") and p.store.is_active("bat", "stale")


def test_alarms_and_audit_survive_a_restart(tmp_path: Path) -> None:
    p, _, _, _ = make(tmp_path)
    p.state.update("bat", {"cell_v_max_v": 3.9}, T0 + 1)
    p.store.ack("bat:cell_over_voltage", "alice")
    p.store.audit("alice", "emergency_stop", {"reason": "drill"})
    p.store.audit("bob", "override_set", {"device": "x"}, ok=False, reason="unknown device")
    p.store.close()
    again = ControlStore(tmp_path / "c.sqlite")
    again.open()
    a = again.alarms["bat:cell_over_voltage"]
    assert a.active and a.acked_by == "alice" and a.severity == "critical"
    log = again.audit_log()
    assert [(e["user"], e["action"], e["ok"]) for e in log] == [
        ("bob", "override_set", False), ("alice", "emergency_stop", True)]
    assert log[0]["reason"] == "unknown device"
    again.close()


def test_reconnection_sequence_closes_pcc_then_restores_in_stages() -> None:
    cfg = ControlConfig.model_validate({"emergency": {"pcc_breaker": "pcc",
                                                      "reconnect_delay_s": 5,
                                                      "step_delay_s": 1}})
    m = ModeMachine(cfg)
    assert m.step(0.0, False, {"pcc": True}) == [("pcc", "trip", True)]
    assert m.mode == "island"
    assert m.refuse("reconnect", False) == "the grid is not healthy at the PCC"
    assert m.step(1.0, True, {"pcc": False}) == []
    assert m.step(5.0, True, {"pcc": False}) == [] and m.mode == "island"
    m.step(6.0, True, {"pcc": False})
    assert m.mode == "reconnect" and m.stage == 0
    assert m.step(7.5, True, {"pcc": False}) == [("pcc", "close", True)]
    assert m.step(8.0, True, {"pcc": False}) == []  # waiting for it to close
    m.step(9.0, True, {"pcc": True})
    assert m.stage == 1
    m.step(10.5, True, {"pcc": True})
    assert m.stage == 2
    m.step(12.0, True, {"pcc": True})
    assert m.mode == "normal"
    assert [h["to"] for h in m.history] == ["island", "reconnect", "normal"]


def test_constant_over_current_trips_after_its_delay() -> None:
    """A value held constant is announced as unchanged; protection must still see it."""
    p, writes, _, _ = make(current_delay_s=1.0, over_current_pct=100.0)
    for i in range(19):  # 70 A held for 9 s, polled every 0.5 s
        p.state.update("meter", {"i_l1_a": 70.0}, T0 + 1 + i * 0.5)
        if i * 0.5 < 1.0:
            assert writes == [], i
    assert sorted(writes) == [("ev1", "p_set_kw", 0.0), ("ev2", "p_set_kw", 0.0)]
    assert p.store.is_active("meter", "over_current_l1")


def test_constant_healthy_value_releases_a_lockout_after_reset() -> None:
    p, _, _, lockouts = make(reset_after_s=5.0)
    p.state.update("bat", {"cell_temp_max_c": 57.0}, T0 + 1)
    assert "bat" in lockouts
    for i in range(2, 12):  # 30 °C, unchanged, for 9 s
        p.state.update("bat", {"cell_temp_max_c": 30.0}, T0 + i)
        assert ("bat" in lockouts) == (i < 2 + 5), i
    assert not p.store.is_active("bat", "cell_over_temperature")


def test_a_new_violation_restarts_the_release_clock() -> None:
    p, _, _, lockouts = make(reset_after_s=5.0)
    p.state.update("bat", {"cell_temp_max_c": 57.0}, T0 + 1)
    p.state.update("bat", {"cell_temp_max_c": 30.0}, T0 + 2)
    p.state.update("bat", {"cell_temp_max_c": 57.0}, T0 + 5)
    p.state.update("bat", {"cell_temp_max_c": 30.0}, T0 + 6)
    p.state.update("bat", {"cell_temp_max_c": 30.0}, T0 + 8)  # 6 s after the first fine
    assert "bat" in lockouts
    p.state.update("bat", {"cell_temp_max_c": 30.0}, T0 + 11)
    assert "bat" not in lockouts


def test_grid_loss_alarm_says_what_control_did_not_islanding_by_default() -> None:
    cfg = site_config(control={})
    assert cfg.control is not None
    state = site_state(cfg, normal_values())
    store = ControlStore(None)
    p = Protection(cfg, cfg.control.protection, state, store, lambda d, pt, v: None, {},
                   lambda why: "no PCC breaker configured, site not islanded: alarm only")
    p.attach()
    p.state.update("meter", {"v_v": 0.0}, T0 + 1)
    msg = store.alarms["meter:under_voltage"].message
    assert "islanding" not in msg and msg.endswith("site not islanded: alarm only")
    bare = Protection(cfg, cfg.control.protection, site_state(cfg, normal_values()),
                      ControlStore(None), lambda d, pt, v: None, {})
    bare.attach()
    bare.state.update("meter", {"v_v": 0.0}, T0 + 1)
    assert "islanding" not in bare.store.alarms["meter:under_voltage"].message


def test_api_numbers_refuse_nan_and_infinity_with_the_reason() -> None:
    import pytest

    from gateway.api import ApiError
    from gateway.control.api_commands import _num
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ApiError, match="'duration_s' must be a finite number"):
            _num({"duration_s": bad}, "duration_s", 1, 1e9)


BMS_SITE = [*DEFAULT_DEVICES,
            {"id": "bat2", "nature": "bess", "ratings": {"capacity_kwh": 50, "p_max_kw": 25}},
            {"id": "bms1", "nature": "bms"}, {"id": "bms2", "nature": "bms"}]


def bms_make(**prot: object) -> tuple[Protection, list[tuple[str, str, object]],
                                      dict[str, str], dict[str, float]]:
    cfg = site_config(devices=BMS_SITE, control={"protection": prot})
    assert cfg.control is not None
    values = normal_values()
    values["bat2"] = dict(values["bat"])
    values["bms1"] = {"cell_temp_max_c": 25.0}
    values["bms2"] = {"cell_temp_max_c": 25.0}
    state = site_state(cfg, values)
    writes: list[tuple[str, str, object]] = []
    lockouts: dict[str, str] = {}
    derates: dict[str, float] = {}
    p = Protection(cfg, cfg.control.protection, state, ControlStore(None),
                   lambda d, pt, v: writes.append((d, pt, v)), lockouts, None, derates)
    p.attach()
    return p, writes, lockouts, derates


def test_a_bms_cell_fault_zeroes_the_battery_it_guards_only() -> None:
    p, writes, lockouts, _ = bms_make(bms_guards={"bms1": "bat2"})
    p.state.update("bms1", {"cell_temp_max_c": 70.0}, T0 + 1)
    assert writes == [("bat2", "p_set_kw", 0.0)] and set(lockouts) == {"bat2"}
    p.state.update("bms2", {"cell_temp_max_c": 70.0}, T0 + 1)  # guards nothing
    assert writes == [("bat2", "p_set_kw", 0.0)]
    msg = p.store.alarms["bms2:cell_over_temperature"].message
    assert msg.endswith("no battery zeroed: bms2 guards none (control.protection.bms_guards)")


def test_a_silent_bms_zeroes_its_battery_until_it_is_fresh_again() -> None:
    p, writes, lockouts, _ = bms_make(bms_guards={"bms1": "bat2"}, stale_after_s=2.0)
    assert "bms1" in p.critical and "bms2" in p.critical  # watched by default
    p.state.update("bat2", {"soc_pct": 60.0}, T0 + 5)
    p.check_stale(T0 + 5)  # bms1 silent since T0
    assert writes == [("bat2", "p_set_kw", 0.0)] and "bms1 lost" in lockouts["bat2"]
    assert p.store.alarms["bms1:lost"].message.endswith("zero sent to bat2")
    assert "none zeroed" in p.store.alarms["bms2:lost"].message
    p.state.update("bms1", {"cell_temp_max_c": 25.0}, T0 + 6)
    p.check_stale(T0 + 6.1)
    assert "bat2" not in lockouts and not p.store.is_active("bms1", "lost")


def test_a_bms_whose_cells_read_invalid_counts_as_lost_and_can_derate_instead() -> None:
    from gateway.model import Invalid
    p, writes, lockouts, derates = bms_make(bms_guards={"bms1": "bat2"},
                                            bms_loss_action="derate",
                                            bms_loss_derate_pct=40)
    p.state.update("bms1", {"cell_temp_max_c": Invalid(6553.5, "all bits set")}, T0 + 1)
    p.state.update("bms2", {"cell_temp_max_c": 25.0}, T0 + 1)
    p.check_stale(T0 + 1.1)
    assert derates == {"bat2": 0.4} and writes == [] and lockouts == {}
    assert "invalid cell_temp_max_c (all bits set)" in p.store.alarms["bms1:lost"].message
    p.state.update("bms1", {"cell_temp_max_c": 25.0}, T0 + 2)
    p.check_stale(T0 + 2.1)
    assert derates == {}


def test_bms_links_are_checked() -> None:
    from gateway.control.config import reference_problems
    cfg = site_config(devices=BMS_SITE)
    natures = {d.id: str(d.nature) for d in cfg.devices}
    bad = ControlConfig.model_validate({"protection": {"bms_guards": {"bms1": "meter",
                                                                      "ghost": "bat"}}})
    assert reference_problems(bad, natures) == [
        "control.protection.bms_guards.bms1: 'meter' is not a battery (bess) of this site",
        "control.protection.bms_guards.ghost: no device 'ghost'"]


def test_a_reading_that_cannot_be_true_is_an_alarm_and_a_critical_one_counts_as_stale() -> None:
    from gateway.model import Invalid

    p, _, _, _ = make(stale_after_s=2.0)
    p.state.update("meter", {"p_kw": 1.0}, T0 + 1)
    p.state.update("bat", {"soc_pct": Invalid(250.0, "outside 0..100 %")}, T0 + 1)
    assert p.check_stale(T0 + 1.5) == ["bat"]  # fresh, but its SOC cannot be true
    stale = p.store.alarms["bat:stale"]
    assert stale.active and "soc_pct = 250.0 (outside 0..100 %)" in stale.message
    invalid = p.store.alarms["bat:invalid"]
    assert invalid.active and "not used" in invalid.message
    p.state.update("bat", {"soc_pct": 55.0}, T0 + 2)
    assert p.check_stale(T0 + 2.5) == []
    assert not p.store.is_active("bat", "invalid") and not p.store.is_active("bat", "stale")
