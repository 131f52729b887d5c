"""What operators rely on in the console, against a real API server in the same loop:
device strings cannot drive the terminal, Diagnostics keeps counting, an alarm opens its
detail on Enter and is acknowledged once, and screens are found by their tab label."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.api import ApiServer, Caller
from gateway.console.app import ConsoleApp
from gateway.console.bridge import Bridge
from gateway.console.data import ConsoleData
from gateway.console.main import screen_name
from gateway.model import Nature
from gateway.sitetime import SiteTimeSource
from gateway.state import DeviceState, SiteState
from gateway.summary import render

SIM_START = datetime(2025, 6, 21, 6, 0, tzinfo=UTC).timestamp()
ESCAPES = "\x1b[2J\x1b]0;owned\x07\x9b31m"


def make_state() -> SiteState:
    state = SiteState()
    state.add_device(DeviceState("grid_meter", Nature.METER, max_age_s=30,
                                 protocol="modbus_tcp", role="grid"))
    state.add_device(DeviceState("pv_roof", Nature.PV_INVERTER, max_age_s=30,
                                 protocol="modbus_tcp"))
    state.update("grid_meter", {"p_kw": 5.0, "v_v": 230.0}, time.time(), latency_ms=1.0)
    state.update("pv_roof", {"p_kw": 2.0, "state": f"MPPT{ESCAPES}"}, time.time())
    return state


class Alarms:
    """Alarm commands with the control component's shape; counts acknowledgements."""

    def __init__(self, api: ApiServer) -> None:
        self.acks: list[str] = []
        self.alarms = [{"key": "pv_roof:comm", "source": "pv_roof", "severity": "warning",
                        "message": "inverter reports " + "a very long reason " * 5 + "END",
                        "raised_s": time.time(), "active": True, "acked_by": None}]
        api.register("alarms", lambda r, c: self.alarms, role="viewer")
        api.register("audit", lambda r, c: [], role="viewer")
        api.register("alarm_ack", self.ack, role="operator")

    def ack(self, req: dict[str, Any], caller: Caller) -> Any:
        self.acks.append(str(req.get("key")))
        self.alarms[0]["acked_by"] = caller.user
        self.alarms[0]["acked_s"] = time.time()
        return self.alarms[0]


@pytest.fixture
async def live(tmp_path: Path) -> Any:
    state = make_state()
    api = ApiServer(state, tmp_path / "api.sock", "gw1", lambda: {"devices": {}})
    alarms = Alarms(api)
    site = SiteTimeSource("Europe/Berlin")  # a simulation at 60x, 06:00 UTC = 08:00 CEST
    sim_start, wall_start = SIM_START, time.time()
    site.use_simulation(lambda: sim_start + (time.time() - wall_start) * 60, 60)
    api.register("site_time", lambda r, c: site.answer(), role="viewer")
    api.register("ev_sessions", lambda r, c: {"active": [
        {"charger": "ev_bay1", "priority": "fleet", "departure_s": SIM_START + 9 * 3600}],
        "history": []}, role="viewer")
    await api.start()
    data = ConsoleData()
    bridge = Bridge(api.path, data, interval_s=0.05)
    await bridge.connect()
    app = ConsoleApp(data, bridge)
    try:
        yield app, state, alarms
    finally:
        await bridge.close()
        await api.stop()


async def settle(app: ConsoleApp) -> None:
    while app._tasks:
        await asyncio.gather(*list(app._tasks))
    app.refresh(force=True)


def press(app: ConsoleApp, key: str, size: tuple[int, int] = (80, 24)) -> None:
    """A key as urwid's main loop delivers it: widgets first, then the app."""
    if app.top.keypress(size, key) is not None:
        app.handle_key(key)


def text_of(app: ConsoleApp, cols: int = 100, rows: int = 30) -> str:
    return "\n".join(ln.decode("utf-8", "replace")
                     for ln in app.top.render((cols, rows), focus=True).text)


async def test_device_strings_are_shown_without_their_control_characters(live: Any) -> None:
    app, state, _ = live
    state.devices["pv_roof"].health.last_error = f"refused{ESCAPES}"
    await app.bridge.refresh_slow()
    app.go("devices")
    await settle(app)
    app.current.show("pv_roof")
    app.refresh(force=True)
    screen = text_of(app)
    assert "\x1b" not in screen and "\x07" not in screen and "\x9b" not in screen
    assert "MPPT\\x1b[2J" in screen  # what the device sent is still visible, as text
    assert "refused\\x1b[2J" in screen
    page = render(state.snapshot())
    assert "\x1b" not in page and "MPPT\\x1b[2J" in page


async def test_diagnostics_polls_and_latency_follow_the_device(live: Any) -> None:
    app, state, _ = live
    app.go("diagnostics")
    await app.bridge.refresh_slow()
    app.refresh(force=True)
    assert app.data.devices["grid_meter"]["polls"] == 1
    for i in range(4):
        state.update("grid_meter", {"p_kw": 6.0 + i}, time.time(), latency_ms=42.5)
    await app.bridge.refresh_slow()
    app.refresh(force=True)
    assert app.data.devices["grid_meter"]["polls"] == 5
    row = next(ln for ln in text_of(app, 120).splitlines() if ln.startswith("grid_meter"))
    assert "42.5 ms" in row and " 5 " in row


async def test_enter_opens_the_alarm_and_a_acknowledges_it_once(live: Any) -> None:
    app, _, alarms = live
    app.go("alarms")
    await settle(app)
    screen = text_of(app, 80, 24)
    assert "END" in screen  # the whole message, wrapped, at 80 columns
    press(app, "enter")
    detail = text_of(app, 80, 24)
    assert "Alarm pv_roof:comm" in detail and "not acknowledged" in detail
    assert alarms.acks == []  # Enter only opens it
    press(app, "a")  # acknowledge from the detail
    await settle(app)
    assert alarms.acks == ["pv_roof:comm"]
    press(app, "a")
    await settle(app)
    assert alarms.acks == ["pv_roof:comm"]  # not sent twice
    assert "already acknowledged by" in text_of(app, 100, 30)


async def test_times_are_on_the_site_clock_in_the_site_zone(live: Any) -> None:
    app, _, _ = live
    app.go("ev")
    await settle(app)
    screen = text_of(app, 80, 24)
    header = screen.splitlines()[0]
    assert "08:0" in header and "CEST sim 60x" in header, header
    row = next(ln for ln in screen.splitlines() if ln.startswith("ev_bay1"))
    assert "17:00:00" in row  # departure on the site clock, Berlin summer time


def test_screens_open_by_tab_label_and_number() -> None:
    assert screen_name("forecast") == "analytics"
    assert screen_name("Diag") == "diagnostics"
    assert screen_name("7") == "alarms"
    with pytest.raises(ValueError, match="unknown screen 'forcast'"):
        screen_name("forcast")


def test_sparkline_scale_includes_zero_and_a_minimum_span_and_gaps_stay_blank() -> None:
    from gateway.console.widgets import BLOCKS, spark_range, sparkline

    now = 1000.0
    small = [(now - 50 + i, 0.1) for i in range(50)]
    lo, hi = spark_range(small, 2.0)
    assert (lo, hi) == (0.0, 2.0)
    line = sparkline(small, 10, now, 100.0, True, lo, hi)
    assert BLOCKS[-1] not in line and line.strip() == BLOCKS[0] * 5  # 0.1 kW is a low bar
    # data for the first 10 s, then nothing for 90 s: the gap is not drawn over
    early = [(now - 100 + i, 5.0) for i in range(10)]
    line = sparkline(early, 10, now, 100.0, True, 0.0, 5.0, gap_s=30.0)
    assert line[0] == BLOCKS[-1] and line[5:] == " " * 5
