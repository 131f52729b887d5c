"""The anomaly detectors in the daemon, end to end: a simulated site over Modbus on
loopback, the historian, site control's alarms. A stuck meter (its registers freeze) is
found on demand by ``analytics_detect`` and shows up in ``alarms`` with the device, the
signal, a score and an explanation; the same site healthy raises none. One daemon for both
phases (healthy first, then the fault) keeps the test short.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from gateway.analytics.anomaly import Anomaly
from gateway.analytics.detect import AlarmBridge, historian_telemetry
from gateway.apiclient import ApiClient
from gateway.config.models import SiteConfig
from gateway.control.alarms import ControlStore
from gateway.daemon import Daemon
from gateway.demo import with_ports
from sim_devices.runner import SimRunner
from tests.waiting import WAIT_S

POLL_S = 0.1
STEP_S = POLL_S  # the detectors' telemetry grid
# The stuck detector only watches a signal that took >= 20 distinct values on the grid in
# the baseline (else it is a state or a setpoint). 3 s at 10 polls/s was 30 grid points:
# a loaded machine polling at 2/3 of that left the meter's p_kw unwatched (18 distinct).
# 6 s still holds 20 distinct values at a third of the nominal poll rate.
BASELINE_S = 6.0


def site(tmp: Path) -> SiteConfig:
    def dev(i: int, id_: str, nature: str, template: str, **kw: Any) -> dict[str, Any]:
        return {"id": id_, "nature": nature, "template": template, "connection": "tcp",
                "unit_id": i, "poll_interval_s": POLL_S, **kw}
    return SiteConfig.model_validate({
        "site": {"name": "detect", "timezone": "UTC"},
        "gateways": [{"id": "gw1", "api_socket": str(tmp / "api.sock")}],
        "connections": [{"id": "tcp", "type": "modbus_tcp", "host": "127.0.0.1", "port": 1,
                         "timeout_s": 0.5, "reconnect_delay_s": 0.1}],
        "devices": [dev(1, "meter", "meter", "meter_3ph", role="grid"),
                    dev(2, "office", "load", "generic_load", ratings={"p_max_kw": 20}),
                    dev(3, "pv", "pv_inverter", "sunspec_inverter",
                        ratings={"p_max_kw": 10, "kwp": 11})],
        "historian": {"path": str(tmp / "h.sqlite"), "flush_interval_s": 0.2},
        "control": {"controller": False},
        "analytics": {"detect_interval_s": 3600, "baseline_s": BASELINE_S, "step_s": STEP_S},
        "simulation": {"seed": 5, "clock": {"start": "2025-06-21T10:00:00+00:00"},
                       "devices": {"office": {"noise_pct": 5}}},
    })


@asynccontextmanager
async def running(tmp: Path) -> AsyncIterator[tuple[SimRunner, Daemon, ApiClient]]:
    cfg = site(tmp)
    runner = SimRunner(cfg, port_overrides={"tcp": 0}, step_s=0.05)
    ports = await runner.start()
    daemon = Daemon(with_ports(cfg, ports))
    try:
        await daemon.start()
        async with ApiClient(daemon.socket_path) as client:
            yield runner, daemon, client
    finally:
        await daemon.shutdown()
        await runner.stop()


async def learn_baseline(client: ApiClient) -> dict[str, Any]:
    """Wait until the historian holds BASELINE_S of telemetry, then learn it as normal."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r: dict[str, Any] = await client.request("analytics_detect", timeout_s=WAIT_S)
        if r["status"] == "checked":
            return r
        await asyncio.sleep(0.25)
    raise AssertionError(f"detectors never left learning: {r}")


def analytics_alarms(alarms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for a in alarms if a["source"].startswith("analytics/")]


async def test_healthy_site_then_stuck_meter_alarm(tmp_path: Path) -> None:
    async with running(tmp_path) as (runner, _daemon, client):
        first = await learn_baseline(client)
        assert first["alarms"] is True  # the control component was found
        # Healthy: several seconds checked after the baseline, nothing reported. (The span
        # checked ends at the historian's latest sample: wait for it, not a fixed 3 s.)
        await asyncio.sleep(3.0)
        deadline = time.monotonic() + WAIT_S
        while True:
            r = await client.request("analytics_detect", timeout_s=WAIT_S)
            if (r["checked"] and r["checked"][1] - r["checked"][0] > 2.0) \
                    or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert r["status"] == "checked" and r["devices"] == 3, r
        assert r["checked"][1] - r["checked"][0] > 2.0
        assert r["anomalies"] == []
        assert analytics_alarms(await client.request("alarms")) == []
        assert await client.request("anomalies") == []
        # A stuck meter: registers freeze.
        await runner.set_fault("meter", "stuck")
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            r = await client.request("analytics_detect", timeout_s=WAIT_S)
            found = [a for a in r["anomalies"] if a["device"] == "meter"]
            if found:
                break
        assert found, r
        assert {a["detector"] for a in found} == {"stuck_signal"}
        assert "p_kw" in {a["signal"] for a in found}
        alarms = analytics_alarms(await client.request("alarms"))
        meter = [a for a in alarms if a["key"] == "analytics/stuck_signal:meter:p_kw"]
        assert len(meter) == 1, alarms
        a = meter[0]
        assert a["active"] and a["severity"] == "warning"
        assert a["source"] == "analytics/stuck_signal"
        assert a["message"].startswith("meter p_kw: p_kw stayed at ")
        assert "stuck sensor" in a["message"] and "score " in a["message"]
        score = next(x["score"] for x in found if x["signal"] == "p_kw")
        assert score > 1.0 and f"score {score:.2f}" in a["message"]
        listed = await client.request("anomalies")
        assert any(x["device"] == "meter" and x["signal"] == "p_kw" for x in listed)
        # Healthy again and re-baselined: the detector no longer reports it, the alarm clears.
        await runner.clear_fault("meter")
        await asyncio.sleep(1.0)
        r = await client.request("analytics_detect", timeout_s=WAIT_S, rebaseline=True,
                                 baseline_s=0.8)
        assert r["status"] == "checked"
        by_key = {x["key"]: x for x in await client.request("alarms")}
        assert by_key["analytics/stuck_signal:meter:p_kw"]["active"] is False



def test_bridge_raises_worst_per_signal_and_clears_only_its_detectors() -> None:
    store = ControlStore(None)
    store.raise_("bat", "cell_temp_max_c>", "critical", "protection's own alarm")
    bridge = AlarmBridge(store)
    a = [Anomaly("pv", "p_kw", 1.5, "low output", "2025-06-21T10:00:00+00:00", "pv_residual"),
         Anomaly("pv", "p_kw", 2.5, "lower output", "2025-06-22T10:00:00+00:00",
                 "pv_residual"),
         Anomaly("analytics", "forecast_training", 1.0, "failed", "2025-06-22T10:00:00+00:00",
                 "training")]
    bridge.sync(a[:2], {"pv_residual"})
    bridge.sync(a[2:], {"training"})
    pv = store.alarms["analytics/pv_residual:pv:p_kw"]
    assert pv.active and pv.severity == "warning"
    assert pv.message.startswith("pv p_kw: lower output (score 2.50")
    bridge.sync([], {"pv_residual"})  # detectors: nothing now -> theirs clear, not others
    assert not store.alarms["analytics/pv_residual:pv:p_kw"].active
    assert store.alarms["analytics/training:analytics:forecast_training"].active
    assert store.alarms["bat:cell_temp_max_c>"].active


def test_telemetry_holds_values_until_the_horizon_and_drops_offline(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "h.sqlite"
    with sqlite3.connect(db) as c:
        c.executescript("CREATE TABLE points (id INTEGER PRIMARY KEY, device TEXT, point TEXT,"
                        " unit TEXT); CREATE TABLE samples (point_id INTEGER, ts REAL, "
                        "value REAL, quality INTEGER);")
        c.execute("INSERT INTO points VALUES (1, 'm', 'p_kw', 'kW')")
        # good 1.0 at t=0, 2.0 at t=10, offline at t=20, good 3.0 at t=30 (horizon t=40)
        c.executemany("INSERT INTO samples VALUES (1, ?, ?, ?)",
                      [(0.0, 1.0, 0), (10.0, 2.0, 0), (20.0, 2.0, 2), (30.0, 3.0, 0)])
    tel = historian_telemetry(db, 0.0, 40.0, 5.0)
    s = tel["m"]["p_kw"]
    assert [t.timestamp() for t in s.index] == [0, 5, 10, 15, 30, 35, 40]
    assert list(s) == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 3.0]
