"""The console's screens rendered to text (urwid canvases) from known data: what an operator
sees, at 80x24 and larger, in colour and monochrome."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from gateway.console.app import NAV_LABELS, ConsoleApp
from gateway.console.data import ConsoleData
from gateway.console.main import read_token
from gateway.console.theme import palette, unicode_ok, want_color
from gateway.console.widgets import flow_bar, sparkline

NOW = time.time()


def point(value: Any, unit: str = "", quality: str = "good", age: float = 1.0
          ) -> dict[str, Any]:
    return {"value": value, "unit": unit, "ts": NOW - age, "quality": quality}


def site_data(role: str = "engineer", control: bool = False) -> ConsoleData:
    d = ConsoleData()
    d.ping = {"gateway": "gw1", "user": "alice", "role": role}
    base = ["ping", "summary", "snapshot", "devices", "device", "stats", "commands"]
    d.commands = {c: {"cmd": c, "role": "viewer", "allowed": True} for c in base}
    if control:
        for c, r in (("control_status", "viewer"), ("alarms", "viewer"), ("audit", "viewer"),
                     ("ev_sessions", "viewer"), ("alarm_ack", "operator"),
                     ("ev_set", "operator"), ("emergency_stop", "operator"),
                     ("mode_request", "operator"), ("shed", "operator"),
                     ("restore", "operator"), ("override_set", "operator"),
                     ("strategy_set", "engineer"), ("limits_set", "engineer")):
            rank = ["viewer", "operator", "engineer"]
            d.commands[c] = {"cmd": c, "role": r, "allowed": rank.index(role) >= rank.index(r)}
    d.set_snapshot({"devices": {
        "grid_meter": {"id": "grid_meter", "nature": "meter", "protocol": "modbus_tcp",
                       "endpoint": "tcp://127.0.0.1:1502", "quality": "good",
                       "last_ok": NOW - 0.4, "errors": 0, "latency_ms": 3.2,
                       "points": {"p_kw": point(12.5, "kW"), "v_v": point(231.0, "V"),
                                  "f_hz": point(50.01, "Hz")}},
        "pv_roof": {"id": "pv_roof", "nature": "pv_inverter", "protocol": "modbus_tcp",
                    "quality": "offline", "last_ok": NOW - 30, "errors": 4,
                    "last_error": "timeout after 1.0 s",
                    "points": {"p_kw": point(7.25, "kW", "offline"),
                               "state": point("mppt", "", "offline")}},
        "battery": {"id": "battery", "nature": "bess", "protocol": "modbus_tcp",
                    "quality": "good", "last_ok": NOW - 1, "errors": 0,
                    "points": {"p_kw": point(-3.0, "kW"), "soc_pct": point(61.0, "%")}},
    }, "summary": {"grid_kw": 12.5, "pv_kw": None, "wind_kw": None, "battery_kw": -3.0,
                   "battery_soc_pct": 61.0, "ev_kw": 0.0, "load_kw": 9.5,
                   "devices": {"good": 2, "stale": 0, "offline": 1}}})
    d.connected = True
    d.stats = {"uptime_s": 600, "historian": {"rows_written": 1234, "size_bytes": 65536,
                                              "buffered": 3},
               "devices": {"pv_roof": {"requests": 40, "errors": 4, "timeouts": 4,
                                       "reconnects": 2, "last_error": "timeout after 1.0 s"}}}
    if control:
        d.set_answer("alarms", [
            {"key": "battery:cell_over_temperature", "source": "battery",
             "severity": "critical", "message": "cell over temperature", "raised_s": NOW - 5,
             "cleared_s": None, "acked_s": None, "acked_by": None, "count": 1,
             "active": True},
            {"key": "pv_roof:stale", "source": "pv_roof", "severity": "warning",
             "message": "stale", "raised_s": NOW - 50, "cleared_s": NOW - 40,
             "acked_s": None, "acked_by": None, "count": 1, "active": False}])
        d.set_answer("audit", [{"ts": NOW - 3, "user": "bob", "action": "emergency_stop",
                                "detail": {"reason": "drill"}, "ok": True, "reason": None},
                               {"ts": NOW - 9, "user": "eve", "action": "alarm_ack",
                                "detail": {"key": "x"}, "ok": False,
                                "reason": "needs the operator role"}])
        d.set_answer("ev_sessions", None)
        d.set_answer("sessions", {"active": [
            {"charger": "ev_bay2", "soc_pct": 40.0, "energy_kwh": 30.0, "delivered_kwh": 2.5,
             "need_kwh": 27.5, "departure_s": NOW + 3600, "priority": "fleet",
             "v2g_allowed": True, "v2g_capable": True}], "history": []})
        d.set_answer("control_status", {
            "mode": {"mode": "island", "stage": 0, "reason": "grid lost"}, "grid_ok": True,
            "strategies": {"grid_limits": {"enabled": True, "pv_curtailment": True},
                           "peak_shaving": {"enabled": False, "threshold_kw": 30.0}},
            "notes": {"grid_limits": "import 12.5 of 43 kW"},
            "limits": {"import_limit_kw": 43.0, "export_limit_kw": 20.0,
                       "peak_threshold_kw": 38.7},
            "overrides": [{"device": "battery", "point": "p_set_kw", "value": 5.0,
                           "expires_s": NOW + 600, "user": "bob"}],
            "setpoints": {}})
    return d


def text_of(app: ConsoleApp, cols: int = 100, rows: int = 30) -> str:
    canvas = app.top.render((cols, rows), focus=True)
    return "\n".join(line.decode("utf-8") for line in canvas.text)


def show(app: ConsoleApp, name: str, cols: int = 100, rows: int = 30) -> str:
    app.go(name)
    return text_of(app, cols, rows)


def test_overview_shows_power_flow_with_direction_mode_leader_and_alarms() -> None:
    d = site_data(control=True)
    first = dict(d.summary)
    d.history.clear()
    now = time.time()
    for i in range(30):
        d.set_summary({**first, "grid_kw": 10.0 + i}, now=now - 300 + 10 * i)
    d.set_summary(first)
    app = ConsoleApp(d)
    text = show(app, "overview")
    assert "AutoGrid ▸ Overview" in text and "gateway gw1" in text and "alice (engineer)" in text
    assert "Grid            12.5 kW importing" in text
    assert "Battery         -3.0 kW charging" in text
    assert "PV                -- kW no data" in text
    assert "Battery SOC     61.0 %" in text
    assert "Site mode island" in text and "Leader standalone (gw1)" in text
    assert "Active alarms 1" in text and "alarms 1" in text.splitlines()[0]
    assert "2 ok, 0 stale, 1 offline" in text
    assert any(ch in text for ch in "▁▂▃▄▅▆▇█"), "no sparkline drawn"
    assert "last 5 min" in text


def test_devices_table_and_detail_with_units_quality_and_comm_stats() -> None:
    app = ConsoleApp(site_data())
    text = show(app, "devices")
    lines = {ln.split()[0]: ln for ln in text.splitlines()[2:] if ln.strip()}
    assert "pv_inverter" in lines["pv_roof"] and "offline" in lines["pv_roof"]
    assert "modbus_tcp" in lines["grid_meter"] and "good" in lines["grid_meter"]
    assert lines["pv_roof"].rstrip().endswith("4")  # errors
    app.current.handle("enter")  # the focused (first) device: battery
    detail = text_of(app)
    assert "battery  bess via modbus_tcp" in detail
    assert "soc_pct" in detail and "61.0 %" in detail
    app.current.handle("esc")
    app.current.show("pv_roof")  # type: ignore[attr-defined]
    detail = text_of(app)
    assert "7.2" in detail and "kW" in detail and "offline" in detail
    assert "requests 40  errors 4  timeouts 4  reconnects 2" in detail
    assert "timeout after 1.0 s" in detail


def test_every_screen_says_what_is_missing_instead_of_failing() -> None:
    app = ConsoleApp(site_data(control=False))
    for name in ("grid", "ev", "alarms", "emergency"):
        assert "not available here (site control: add a control section" in \
            show(app, name), name
    assert "analytics: it runs with the historian on" in show(app, "analytics")
    text = show(app, "trading")
    assert "Energy trading is not part of this gateway yet" in text
    for name in app.by_name:  # product words, never the project's tracker
        assert "issue" not in show(app, name, 200, 60).lower(), name
    assert "standalone gateway" in show(app, "diagnostics")
    assert "monitoring only (no site control)" in show(app, "overview")


def test_control_screens_show_the_control_answers() -> None:
    app = ConsoleApp(site_data(control=True))
    text = show(app, "alarms")
    assert "critical  battery" in text and "cell over temperature" in text
    assert "cleared" in text
    assert "bob             emergency_stop" in text and "REFUSED: needs the operator" in text
    text = show(app, "ev")
    assert "ev_bay2" in text and "fleet" in text and "27.5" in text
    assert "fleet      1 car" in text
    text = show(app, "grid")
    assert "import limit 43.0 kW" in text and "export limit 20.0 kW" in text
    assert "peak_shaving          off" in text and "grid_limits           ON" in text
    assert "threshold_kw" not in text and "pv_curtailment" not in text  # not switches
    assert "peak threshold 38.7 kW" in text  # the one in force, from the limits
    assert "battery.p_set_kw" in text and "bob" in text
    text = show(app, "emergency")
    assert "EMERGENCY STOP" in text and "Site mode island" in text


def test_viewer_is_told_why_and_nothing_opens() -> None:
    app = ConsoleApp(site_data(role="viewer", control=True))
    text = show(app, "emergency")
    assert "alice is viewer; this needs the operator role" in text
    app.handle_key("s")
    text = text_of(app)
    assert "Refused: alice is viewer; this needs the operator role" in text
    assert "step 1 of 2" not in text
    app.go("alarms")
    app.handle_key("a")
    assert "Refused: alice is viewer" in text_of(app)


def test_emergency_needs_two_steps_and_the_exact_word() -> None:
    app = ConsoleApp(site_data(role="operator", control=True))
    sent: list[tuple[str, dict[str, Any]]] = []
    app.act = lambda cap, params, what, after=None: sent.append((cap, params))  # type: ignore
    show(app, "emergency")
    app.handle_key("s")
    size = (100, 30)
    assert "step 1 of 2" in text_of(app)
    app.top.keypress(size, "y")
    assert "step 2 of 2: ARMED" in text_of(app)
    for ch in "STOP":
        app.top.keypress(size, ch)
    app.top.keypress(size, "enter")
    assert sent == [("estop", {"reason": "operator console"})]
    assert "step 2" not in text_of(app)
    # a wrong word or Esc sends nothing
    app.handle_key("s")
    app.top.keypress(size, "y")
    for ch in "STOOP":
        app.top.keypress(size, ch)
    app.top.keypress(size, "enter")
    app.handle_key("s")
    app.top.keypress(size, "esc")
    assert len(sent) == 1
    assert "cancelled; nothing was sent" in text_of(app)
    # restore offers what can be restored now: leave the island
    app.handle_key("r")
    app.top.keypress(size, "y")
    for ch in "RESTORE":
        app.top.keypress(size, ch)
    app.top.keypress(size, "enter")
    assert sent[-1] == ("mode", {"mode": "reconnect"})


def test_a_mode_the_site_cannot_enter_is_refused_before_any_confirmation() -> None:
    data = site_data(role="operator", control=True)
    app = ConsoleApp(data)
    sent: list[tuple[str, dict[str, Any]]] = []
    app.act = lambda cap, params, what, after=None: sent.append((cap, params))  # type: ignore
    show(app, "emergency")
    app.handle_key("i")  # the site is islanded already
    assert "step 1 of 2" not in text_of(app)
    assert "Island: refused: already islanded" in text_of(app)
    status = data.answers["control_status"].result
    data.set_answer("control_status", {**status, "grid_ok": False})
    app.handle_key("r")  # reconnect while the grid is still down
    assert "step 1 of 2" not in text_of(app)
    assert "refused: the grid is not healthy at the PCC" in text_of(app)
    assert sent == []


@pytest.mark.parametrize("size", [(80, 24), (100, 30), (200, 60), (60, 15)])
def test_every_screen_renders_at_every_size(size: tuple[int, int]) -> None:
    app = ConsoleApp(site_data(control=True), unicode=size[0] != 60)
    for name in app.by_name:
        text = show(app, name, *size)
        lines = text.splitlines()
        assert len(lines) == size[1]
        assert lines[0].lstrip().startswith("AutoGrid")
        if size[0] >= 80:  # the key bar and the clock are whole, not cut
            nav = lines[-1].rstrip()
            numbered = [s.name for s in app.screens]
            label = NAV_LABELS[numbered.index(name)] if name in numbered else ""  # by letter
            assert f" {label}" in nav and nav.endswith("q Quit ? Help"), (name, size, nav)
            assert re.search(r"\d\d:\d\d:\d\d \S+$", lines[0].rstrip()), lines[0]


def test_theme_colour_and_monochrome() -> None:
    assert want_color(False, {"TERM": "xterm"})
    assert not want_color(False, {"TERM": "xterm", "NO_COLOR": ""})
    assert not want_color(True, {"TERM": "xterm"})
    assert not want_color(False, {"TERM": "dumb"})
    colour = {e[0]: e for e in palette(True)}
    assert colour["value"][1] == "light green" and colour["alarm"][1].startswith("light red")
    assert colour["body"][1:3] == ("white", "black")
    assert colour["emergency"][2] == "dark red"
    mono = {e[0]: e for e in palette(False)}
    assert mono["alarm"][1:3] == ("default", "default") and "bold" in mono["alarm"][3]
    assert unicode_ok({"LANG": "C.UTF-8"}) and not unicode_ok({"LANG": "C"})


def test_sparkline_and_flow_bar() -> None:
    samples = [(100.0 + i, float(i)) for i in range(10)]
    line = sparkline(samples, 10, now=110.0, window_s=10.0)
    assert line[0] == "▁" and line[-1] == "█" and len(line) == 10
    held = sparkline([(100.0, 1.0), (105.0, 3.0)], 10, now=110.0, window_s=10.0)
    assert held.strip() and " " not in held  # gaps hold the previous value
    assert sparkline([], 5, 0, 10) == "     "
    assert flow_bar(10, 10, 11) == "     |█████"
    assert flow_bar(-5, 10, 11, unicode=False) == "   ==|     "
    assert flow_bar(None, 10, 11) == "     ?     "


def test_token_from_file_or_environment(tmp_path: Any, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    f = tmp_path / "token"
    f.write_text("s3cret\n")
    assert read_token(str(f)) == "s3cret"
    monkeypatch.setenv("AUTOGRID_TOKEN", "from-env")
    assert read_token(None) == "from-env"
    with pytest.raises(ValueError, match="cannot read"):
        read_token(str(tmp_path / "missing"))


def test_analytics_screen_shows_forecast_band_anomalies_and_battery_health() -> None:
    import datetime as dt

    d = site_data(control=True)
    d.commands.update({c: {"cmd": c, "role": "viewer", "allowed": True}
                       for c in ("forecast", "anomalies", "battery_health")})
    start = dt.datetime.fromtimestamp(time.time() - 450, dt.UTC)  # now: not at import
    times = [(start + dt.timedelta(minutes=15 * i)).isoformat() for i in range(96)]
    d.set_answer("forecast", {
        "available": True, "version": 3, "trained_at": "2026-01-01T00:00:00+00:00",
        "models": {"load": {"kind": "random_forest"}},
        "forecast": {"load": {"time": times, "p50": [8.0 + i / 10 for i in range(96)],
                              "p10": [6.0] * 96, "p90": [12.5] * 96}}})
    d.set_answer("anomalies", [{"device": "pv_roof", "signal": "p_kw", "score": 0.93,
                                "explanation": "PV output 40 % below expected",
                                "ts": "2026-01-01T10:00:00+00:00", "detector": "pv"}])
    d.set_answer("battery_health", {"batteries": ["battery", "bess2"], "reports": {
        "battery": {"device": "battery", "soh_pct": 97.5, "soh_ci_pct": 0.9,
                    "capacity_kwh": 48.8, "n_cycles": 12, "resistance_mohm": 41.0,
                    "resistance_ci_mohm": 1.5, "soh_slope_pct_per_year": -2.1,
                    "remaining_life_years": 8.3},
        "bess2": {"device": "bess2", "capacity_note": "not enough data: 1 charge and 2 "
                  "discharge cycles", "resistance_note": "not enough data: 4 of 30 steps"}}})
    app = ConsoleApp(d)
    text = show(app, "analytics")
    assert "Site load fc    8.0 [6.0-12.5] actual    9.5 kW" in text
    assert "random_forest" in text and "model v3" in text
    assert "▁" in text and "█" in text  # the next 24 h as a sparkline
    assert "pv_roof" in text and "0.93" in text and "40 % below expected" in text
    assert "SOH 97.5 ± 0.9 %" in text and "life 8.3 yr" in text
    assert "R 41.0 ± 1.5 mΩ" in text
    assert "bess2" in text and "SOH not enough data: 1 charge" in text
    d.set_answer("forecast", {"available": False, "error": "needs 17 days of history"})
    app.refresh(force=True)
    assert "no forecast model yet (needs 17 days of history)" in text_of(app)


def test_done_text_says_what_the_device_took() -> None:
    from gateway.console.app import done_text

    assert done_text("shed heater", {"written": True, "read_back": False}) == \
        "Done: shed heater (device took False)"
    assert done_text("island", {"mode": "island"}) == "Done: island (site mode now island)"
    assert done_text("strategy peak_shaving off", {"changed": {"peak_shaving.enabled": {
        "from": True, "to": False}}, "strategies": {}}) == \
        "Done: strategy peak_shaving off (peak_shaving.enabled now False)"
    assert done_text("strategy v2g on", {"changed": {}, "strategies": {}}) == \
        "Done: strategy v2g on (nothing changed)"
    assert done_text("restore heater", {"restored": "heater", "enabled": False,
                                        "note": "control keeps it off for now"}) == \
        "Done: restore heater (control keeps it off for now)"
    assert done_text("x", None) == "Done: x"


def test_island_on_a_site_whose_breakers_include_no_pcc_breaker_is_refused_at_once() -> None:
    """The daemon names its PCC breaker (none here) in control_status, so a site with a
    feeder breaker but no PCC breaker is refused before the dialog, not after it."""
    data = site_data(role="operator", control=True)
    snap = {"devices": {**data.devices, "ev_feeder": {
        "id": "ev_feeder", "nature": "breaker", "protocol": "modbus_tcp", "quality": "good",
        "last_ok": NOW - 1, "errors": 0, "points": {"closed": point(True, "")}}},
        "summary": data.summary}
    data.set_snapshot(snap)
    assert "breaker" in [d.get("nature") for d in data.devices.values()]
    status = data.answers["control_status"].result
    data.set_answer("control_status", {**status, "mode": {"mode": "normal"},
                                       "grid_ok": True, "pcc_breaker": None})
    app = ConsoleApp(data)
    sent: list[tuple[str, dict[str, Any]]] = []
    app.act = lambda cap, params, what, after=None: sent.append((cap, params))  # type: ignore
    show(app, "emergency")
    app.handle_key("i")
    assert "step 1 of 2" not in text_of(app)
    assert "no PCC breaker" in text_of(app)
    assert sent == []
