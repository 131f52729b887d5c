"""Black start from the battery alone, for real: the daemon against the simulated site over
Modbus on loopback. The grid goes, no battery forms the island, the site goes dark; the
controller (automatically, or an operator through the API) opens the PCC, sheds every load,
commands the battery grid-forming, then brings back the critical load, and later reconnects
with the battery leaving grid-forming only after the PCC closed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.apiclient import ApiClient
from gateway.model import PointValue
from sim_devices.runner import SimRunner
from tests.test_control_daemon import running, site, wait_for

Write = tuple[str, str, PointValue]


def record_writes(runner: SimRunner) -> list[Write]:
    """Every write the simulated devices accept, in the order they arrive."""
    log: list[Write] = []
    for model in runner.site.models.values():
        inner = model.write_point

        def observed(point: str, value: PointValue, _id: str = model.device_id,
                     _inner: Any = inner) -> PointValue:
            log.append((_id, point, value))
            return _inner(point, value)
        model.write_point = observed
    return log


def first(log: list[Write], dev: str, point: str, value: PointValue, after: int = -1) -> int:
    return next(i for i, w in enumerate(log) if i > after and w == (dev, point, value))


def assert_black_start_order(log: list[Write]) -> int:
    trip = first(log, "pcc", "trip", True)
    form = first(log, "bat", "grid_forming", True)
    crit_off = first(log, "crit", "enabled", False)
    heater_off = first(log, "heater", "enabled", False)
    crit_on = first(log, "crit", "enabled", True, after=form)
    assert trip < form and crit_off < form and heater_off < form, log
    assert ("heater", "enabled", True) not in log[form:]  # deferrable stays shed in the island
    return crit_on


async def test_grid_loss_on_a_dark_site_black_starts_from_the_battery(tmp_path: Path) -> None:
    cfg = site(tmp_path, import_limit=60.0,
               sim={"bat": {"initial_soc_pct": 60, "grid_forming": False}})
    async with running(cfg) as (runner, _daemon, comp):
        await wait_for(lambda: comp.controller.cycles > 5 and comp.controller.grid_ok is True
                       and comp.controller.forming is False
                       and comp.controller.modes.mode == "normal", "control running")
        seen = len(comp.controller.modes.history)  # (a busy start may see 0 V first)
        log = record_writes(runner)
        runner.set_grid(False)
        await wait_for(lambda: comp.controller.modes.mode == "island", "the island back up")
        # the critical load's enable is written by its own writer task: it may land after
        # the mode changed; once the load is on, the write log is complete
        await wait_for(lambda: float(runner.values("crit")["p_kw"]) > 4.9, "critical load on")
        assert_black_start_order(log)
        assert runner.values("bat")["grid_forming"] is True
        assert float(runner.values("bat")["p_kw"]) > 4.9  # the battery carries it
        assert runner.values("meter")["v_v"] == 0.0  # the grid is still down
        assert [h["to"] for h in comp.controller.modes.history[seen:]] == [
            "black_start", "island"]


async def test_operator_black_start_then_reconnection_in_a_safe_order(tmp_path: Path) -> None:
    cfg = site(tmp_path, import_limit=60.0, control={"protection": {"grid_loss_trip": False}},
               sim={"bat": {"initial_soc_pct": 60, "grid_forming": False}})
    async with running(cfg) as (runner, daemon, comp):
        await wait_for(lambda: comp.controller.cycles > 5 and comp.controller.grid_ok is True
                       and comp.controller.forming is False
                       and comp.controller.modes.mode == "normal", "control running")
        seen = len(comp.controller.modes.history)  # (a busy start may see 0 V first)
        log = record_writes(runner)
        runner.set_grid(False)
        await wait_for(lambda: comp.controller.grid_ok is False, "the grid seen lost")
        await wait_for(lambda: float(runner.values("crit")["p_kw"]) == 0.0, "the site dark")
        assert comp.controller.modes.mode == "normal"  # no automatic action configured
        async with ApiClient(daemon.socket_path) as api:
            await api.request("mode_request", mode="black_start", reason="drill")
            status = await api.request("control_status")
            assert status["mode"]["source"] == "battery"
        await wait_for(lambda: comp.controller.modes.mode == "island", "the island back up")
        await wait_for(lambda: float(runner.values("crit")["p_kw"]) > 4.9, "critical load on")
        crit_on = assert_black_start_order(log)
        runner.set_grid(True)
        await wait_for(lambda: comp.controller.modes.mode == "normal", "reconnected")
        close = first(log, "pcc", "close", True, after=crit_on)
        follow = first(log, "bat", "grid_forming", False, after=crit_on)
        assert close < follow, log  # the island is carried until the PCC has closed
        assert runner.values("bat")["grid_forming"] is False
        await wait_for(lambda: runner.values("heater")["enabled"] is True, "heater restored")
        assert [h["to"] for h in comp.controller.modes.history[seen:]] == [
            "black_start", "island", "reconnect", "normal"]
        audited = [e["detail"]["to"] for e in reversed(comp.store.audit_log())
                   if e["action"] == "mode"]
        assert audited[seen:] == ["black_start", "island", "reconnect", "normal"]
