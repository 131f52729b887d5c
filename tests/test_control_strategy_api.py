"""The operator's strategy commands on the real API (unix socket, the control commands, a
real controller and audit store): ``strategy_set`` switches a strategy or sets one of its
section's parameters and says what changed, refuses an old flat name with where it moved,
``limits_set`` still sets the peak threshold, and the console's Space key toggles a
strategy through them. The next control cycle acts on each change."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from control_fakes import T0, normal_values, site_config, site_state

from gateway.api import ApiServer
from gateway.apiclient import ApiClient, ApiRequestError
from gateway.console.app import ConsoleApp
from gateway.console.bridge import Bridge
from gateway.console.data import ConsoleData
from gateway.control.alarms import ControlStore
from gateway.control.api_commands import register
from gateway.control.controller import Controller
from gateway.state import SiteState

# only peak shaving steers the battery, so its threshold alone decides the setpoint
ONLY_PEAK = {"self_consumption": False, "time_of_use": False, "plan_tracking": False,
             "ev_charging": False, "grid_limits": False}


class Served:
    """A controller and an audit store behind the real control commands on an ApiServer."""

    def __init__(self, tmp: Path) -> None:
        self.cfg = site_config(control={"strategies": ONLY_PEAK},
                               grid={"import_limit_kw": 100})
        self.controller = Controller(self.cfg, clock=lambda: T0)
        self.store = ControlStore(None)
        self.api = ApiServer(SiteState(), tmp / "api.sock", "gw1", lambda: {})
        self.api.role_of = lambda uid, gid: "engineer"
        comp = SimpleNamespace(controller=self.controller, store=self.store,
                               control=self.controller.control,
                               daemon=SimpleNamespace(cfg=self.cfg), stats=lambda: {})
        register(comp, self.api)  # type: ignore[arg-type]
        self.now = T0

    def battery_kw(self, grid_kw: float = 60.0) -> float:
        """The battery setpoint of the next cycle at ``grid_kw`` of import."""
        self.now += 1.0
        state = site_state(self.cfg, normal_values(grid_kw=grid_kw, soc=60.0), self.now)
        out = self.controller.cycle(state, self.now).setpoints
        return float(out["bat"]["p_set_kw"])

    def audit(self) -> list[tuple[str, bool, Any, str | None]]:
        return [(e["action"], e["ok"], e["detail"], e["reason"])
                for e in reversed(self.store.audit_log())]


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    s = Served(tmp_path)
    await s.api.start()
    try:
        yield s
    finally:
        await s.api.stop()


async def test_strategy_set_changes_a_section_and_says_what_changed(served: Served) -> None:
    assert served.battery_kw() == 0.0  # threshold 90 kW (90 % of the limit): nothing to do
    async with ApiClient(served.api.path) as api:
        got = await api.request("strategy_set", settings={"peak_shaving.threshold_kw": 50})
        assert got["changed"] == {"peak_shaving.threshold_kw": {"from": None, "to": 50.0}}
        assert got["strategies"]["peak_shaving"] == {"enabled": True, "threshold_kw": 50.0}
        assert served.battery_kw() == pytest.approx(10.0)  # 60 kW import held to 50
        got = await api.request("strategy_set", settings={"peak_shaving": False})
        assert got["changed"] == {"peak_shaving.enabled": {"from": True, "to": False}}
        assert served.battery_kw() == 0.0
        got = await api.request("strategy_set",
                                settings={"peak_shaving": {"enabled": True, "threshold_kw": 55}})
        assert set(got["changed"]) == {"peak_shaving.enabled", "peak_shaving.threshold_kw"}
        assert served.battery_kw() == pytest.approx(5.0)
        got = await api.request("strategy_set", settings={"peak_shaving": True})
        assert got["changed"] == {}  # asked, but it was on already: nothing changed
        status = await api.request("control_status")
        assert status["strategies"]["peak_shaving"]["threshold_kw"] == 55.0
        assert status["limits"]["peak_threshold_kw"] == 55.0
    assert [a[:3] for a in served.audit()] == [
        ("strategy_set", True, {"settings": {"peak_shaving.threshold_kw": 50}}),
        ("strategy_set", True, {"settings": {"peak_shaving": False}}),
        ("strategy_set", True, {"settings": {"peak_shaving": {"enabled": True,
                                                              "threshold_kw": 55}}}),
        ("strategy_set", True, {"settings": {"peak_shaving": True}})]


async def test_strategy_set_refuses_old_and_unknown_names_and_changes_nothing(
        served: Served) -> None:
    async with ApiClient(served.api.path) as api:
        for settings, reason in (
                ({"peak_threshold_kw": 50},
                 "peak_threshold_kw: moved: write strategies.peak_shaving.threshold_kw"),
                ({"peak_shavin": False}, "unknown strategy 'peak_shavin'; did you mean "
                                         "'peak_shaving'?"),
                ({"peak_shaving.treshold_kw": 50}, "peak_shaving: unknown parameter "
                                                  "'treshold_kw'; did you mean "
                                                  "'threshold_kw'?"),
                ({"peak_shaving": {"threshold_kw": -5}, "v2g": True},
                 "peak_shaving.threshold_kw: Input should be greater than or equal to 0")):
            with pytest.raises(ApiRequestError) as err:
                await api.request("strategy_set", settings=settings)
            assert reason in str(err.value)
    assert served.controller.control.strategies.peak_shaving.threshold_kw is None
    assert served.battery_kw() == 0.0
    refused = served.audit()
    assert [(a, ok) for a, ok, _, _ in refused] == [("strategy_set", False)] * 4
    assert refused[0][3] is not None and "moved: write strategies.peak_shaving" in refused[0][3]


async def test_limits_set_still_sets_the_peak_threshold(served: Served) -> None:
    async with ApiClient(served.api.path) as api:
        got = await api.request("limits_set", peak_threshold_kw=45)
        assert got == {"peak_threshold_kw": 45.0}
        assert served.controller.control.strategies.peak_shaving.threshold_kw == 45.0
        assert served.battery_kw() == pytest.approx(15.0)
        # after a strategy_set (which gives the strategies new sections) it still lands
        await api.request("strategy_set", settings={"v2g": False})
        await api.request("limits_set", peak_threshold_kw=52)
        assert served.battery_kw() == pytest.approx(8.0)
        got = await api.request("limits_set", peak_threshold_kw=None)  # back to the default
        assert got == {"peak_threshold_kw": None}
        assert served.battery_kw() == 0.0
        # set while peak shaving is off: it is kept, and the reply says it does not hold yet
        await api.request("strategy_set", settings={"peak_shaving": False})
        got = await api.request("limits_set", peak_threshold_kw=40)
        assert got["peak_threshold_kw"] == 40.0 and "peak shaving is off" in got["note"]
        assert served.battery_kw() == 0.0
        await api.request("strategy_set", settings={"peak_shaving": True})
        assert served.battery_kw() == pytest.approx(20.0)
    assert served.audit()[0][:3] == ("limits_set", True, {"peak_threshold_kw": 45})


async def test_space_on_the_grid_screen_toggles_the_focused_strategy(served: Served) -> None:
    data = ConsoleData()
    bridge = Bridge(served.api.path, data, interval_s=0.05)
    await bridge.connect()
    app = ConsoleApp(data, bridge)
    try:
        app.go("grid")
        await _settle(app)
        name = app.current.strategies.focus_key()  # type: ignore[attr-defined]
        assert name == "grid_limits"  # the first section, off in this site
        app.handle_key(" ")
        await _settle(app)
        assert served.controller.control.strategies.grid_limits.enabled is True
        assert app.message is not None and "grid_limits.enabled now True" in app.message[0]
        rows = app.current.strategies.keys()  # type: ignore[attr-defined]
        assert "peak_shaving" in rows and "threshold_kw" not in rows
    finally:
        await bridge.close()
    assert served.audit()[0][:3] == ("strategy_set", True,
                                     {"settings": {"grid_limits": True}})


async def _settle(app: ConsoleApp) -> None:
    await app.bridge.refresh_slow()  # type: ignore[union-attr]
    while app._tasks:
        await asyncio.gather(*list(app._tasks))
    app.refresh(force=True)
