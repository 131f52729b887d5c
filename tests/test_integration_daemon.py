"""The daemon against the simulated site over real Modbus on 127.0.0.1.

Every template is polled end to end; every fault kind is injected and survived: the device
goes offline within two polls, comes back by itself when the fault clears, and the daemon
never stops polling the others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.base import WriteError
from drivers.template import load_template, template_names
from gateway.apiclient import ApiClient
from gateway.config.models import SiteConfig
from gateway.daemon import Daemon
from gateway.demo import with_ports
from gateway.model import Kind, Quality, point_spec
from sim_devices.runner import SimRunner
from tests.waiting import WAIT_S

POLL_S = 0.25
TIMEOUT_S = 0.2  # < POLL_S, so a timed-out poll still fits in its period


SERVED_PROTOCOLS = ("modbus", "dnp3")  # templates of these protocols are served below


def served_templates() -> list[str]:
    return [n for n in template_names() if load_template(n).protocol in SERVED_PROTOCOLS]


def polled_points(tpl: object) -> set[str]:
    """Points a read returns (a DNP3 command-only point such as 'trip' is not read)."""
    points: dict[str, object] = getattr(tpl, "points")  # noqa: B009
    return {n for n, p in points.items() if getattr(p, "readable", True)}


def every_template_site(tmp: Path) -> SiteConfig:
    """One device per shipped template: SunSpec inverter and friends on TCP, the meter
    behind an RTU-over-TCP gateway, as on many real sites; each DNP3 template on an
    outstation of its own."""
    devices = []
    dnp3_conns: list[dict[str, object]] = []
    for unit, name in enumerate(served_templates(), start=1):
        tpl = load_template(name)
        conn = "rtu" if tpl.nature == "meter" else "tcp"
        if tpl.protocol == "dnp3":
            conn = f"dnp3_{unit}"
            dnp3_conns.append({"id": conn, "type": "dnp3_tcp", "class1_interval_s": POLL_S,
                               "class2_interval_s": POLL_S, "class3_interval_s": POLL_S})
        devices.append({"id": name, "nature": str(tpl.nature), "template": name,
                        "connection": conn, "unit_id": unit, "poll_interval_s": POLL_S,
                        "ratings": _ratings(str(tpl.nature))})
    conn_common = {"host": "127.0.0.1", "port": 1, "timeout_s": TIMEOUT_S,
                   "reconnect_delay_s": 0.1, "reconnect_delay_max_s": 0.5}
    return SiteConfig.model_validate({
        "site": {"name": "integration", "latitude": 48.0, "longitude": 11.0,
                 "timezone": "Europe/Berlin"},
        "gateways": [{"id": "gw1", "api_socket": str(tmp / "api.sock")}],
        "connections": [{"id": "tcp", "type": "modbus_tcp", **conn_common},
                        {"id": "rtu", "type": "modbus_rtu_over_tcp", **conn_common},
                        *({**c, **conn_common} for c in dnp3_conns)],
        "devices": devices,
        "historian": {"path": str(tmp / "history.sqlite"), "flush_interval_s": 0.2},
        "simulation": {"seed": 1, "clock": {"start": "2025-06-21T12:00:00+02:00"}},
    })


def _ratings(nature: str) -> dict[str, float]:
    return {"pv_inverter": {"kwp": 30, "p_max_kw": 30},
            "bess": {"capacity_kwh": 50, "p_max_kw": 25},
            "evse": {"p_max_kw": 11}, "load": {"p_max_kw": 9},
            "wind_turbine": {"p_max_kw": 50}}.get(nature, {})


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[tuple[SimRunner, Daemon]]:
    cfg = every_template_site(tmp_path)
    runner = SimRunner(cfg, port_overrides={c.id: 0 for c in cfg.connections})
    ports = await runner.start()
    daemon = Daemon(with_ports(cfg, ports))
    try:
        await daemon.start()
        yield runner, daemon
    finally:
        await daemon.shutdown()
        await runner.stop()


async def wait_for(predicate: object, what: str, limit_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def all_good(daemon: Daemon) -> bool:
    return all(d.health.quality is Quality.GOOD for d in daemon.state.devices.values())


async def test_every_template_polled_and_values_match_the_simulator(
        site: tuple[SimRunner, Daemon]) -> None:
    runner, daemon = site
    await wait_for(lambda: all_good(daemon), "every device good")
    runner.step(0.0)  # freeze nothing; values below are compared with tolerance
    await asyncio.sleep(2 * POLL_S)
    for dev_id, dev in daemon.state.devices.items():
        truth = runner.values(dev_id)
        tpl = load_template(dev_id)
        assert set(dev.readings) == polled_points(tpl), dev_id
        for point, reading in dev.readings.items():
            spec = point_spec(dev.nature, point)
            assert spec is not None and reading.unit == spec.unit
            if reading.value is None:  # not implemented by the device
                continue
            want = truth[point]
            if spec.kind is Kind.FLOAT:
                assert isinstance(reading.value, float), (dev_id, point, reading.value)
                # moving physics between poll and compare: allow a generous band
                assert reading.value == pytest.approx(want, rel=0.2, abs=0.5), (dev_id, point)
            elif spec.kind is Kind.BOOL:
                assert reading.value is want or reading.value == bool(want), (dev_id, point)
            elif spec.kind is Kind.STR:
                assert reading.value == want, (dev_id, point)


async def test_api_and_historian_see_the_site(site: tuple[SimRunner, Daemon]) -> None:
    _runner, daemon = site
    await wait_for(lambda: all_good(daemon), "every device good")
    async with ApiClient(daemon.socket_path) as client:
        snap = await client.request("snapshot")
        assert set(snap["devices"]) == set(served_templates())
        assert snap["summary"]["devices"]["good"] == len(served_templates())
        stats = await client.request("stats")
        assert stats["devices"]["sunspec_inverter"]["requests"] > 0
    assert daemon.historian is not None
    await daemon.historian.flush()
    assert daemon.historian.rows_written > 0


async def test_write_goes_to_the_device_and_a_clamp_is_reported(
        site: tuple[SimRunner, Daemon]) -> None:
    runner, daemon = site
    await wait_for(lambda: all_good(daemon), "every device good")
    accepted = await daemon.ios["generic_bess"].write("p_set_kw", -10.0)
    assert accepted == pytest.approx(-10.0)
    assert runner.values("generic_bess")["p_set_kw"] == pytest.approx(-10.0)
    # The device clamps to its 25 kW rating: the read-back shows it and the write fails.
    with pytest.raises(WriteError, match=r"read back 25\.0"):
        await daemon.ios["generic_bess"].write("p_set_kw", 1000.0)
    assert runner.values("generic_bess")["p_set_kw"] == pytest.approx(25.0)


FAULTS = [
    ("timeout", {}),
    ("exception", {"code": 4}),
    ("garbage", {"seed": 3}),
    ("drop", {}),
    ("refuse", {}),
    ("slow", {"delay_ms": 1000}),  # slower than the 0.2 s timeout
]


@pytest.mark.parametrize(("kind", "params"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_fault_is_survived(site: tuple[SimRunner, Daemon], kind: str,
                                 params: dict[str, object]) -> None:
    runner, daemon = site
    victim = "generic_bess"
    await wait_for(lambda: all_good(daemon), "every device good")
    dev = daemon.state.devices[victim]
    other = daemon.state.devices["meter_3ph"]  # on another endpoint
    polls_before = dev.health.polls
    other_before = other.health.polls

    await runner.set_fault(victim, kind, **params)
    await wait_for(lambda: dev.health.quality is Quality.OFFLINE, f"{victim} offline")
    # Offline within two polls of the fault (the poll in flight may still succeed).
    assert dev.health.polls - polls_before <= 2
    assert dev.health.last_error
    assert dev.device_quality(time.time()) is Quality.OFFLINE

    failed = dev.health.polls  # keep failing for a while: still offline, no crash
    await wait_for(lambda: dev.health.polls >= failed + 3 and other.health.polls > other_before,
                   "more polls of both devices")
    assert dev.health.quality is Quality.OFFLINE
    assert other.health.quality is Quality.GOOD and other.health.polls > other_before

    await runner.clear_fault(victim, kind)
    await wait_for(lambda: dev.health.quality is Quality.GOOD, f"{victim} back online")
    assert all(not j.task.done() for j in daemon.poller.jobs.values() if j.task)


async def test_stuck_values_keep_polling_and_freeze(site: tuple[SimRunner, Daemon]) -> None:
    runner, daemon = site
    await wait_for(lambda: all_good(daemon), "every device good")
    dev = daemon.state.devices["meter_3ph"]
    await runner.set_fault("meter_3ph", "stuck")
    stuck_at = dev.health.polls
    await wait_for(lambda: dev.health.polls >= stuck_at + 2, "a poll of the stuck meter")
    frozen = {p: r.value for p, r in dev.readings.items()}
    polls = dev.health.polls
    runner.step(600.0)  # ten simulated minutes pass: the physics moves on
    await wait_for(lambda: dev.health.polls >= polls + 3, "more polls of the stuck meter")
    assert dev.health.polls > polls and dev.health.quality is Quality.GOOD
    assert {p: r.value for p, r in dev.readings.items()} == frozen
    await runner.clear_fault("meter_3ph", "stuck")
    await wait_for(lambda: dev.readings["v_l1_v"].value != frozen["v_l1_v"], "values moving")


async def test_two_faults_on_one_endpoint_leave_the_other_unit_polled(
        site: tuple[SimRunner, Daemon]) -> None:
    runner, daemon = site
    await wait_for(lambda: all_good(daemon), "every device good")
    await runner.set_fault("generic_bess", "timeout")
    await runner.set_fault("generic_evse", "exception", code=6)
    bess, evse = daemon.state.devices["generic_bess"], daemon.state.devices["generic_evse"]
    pv = daemon.state.devices["sunspec_inverter"]  # same endpoint, healthy
    await wait_for(lambda: bess.health.quality is Quality.OFFLINE
                   and evse.health.quality is Quality.OFFLINE, "both offline")
    polls = pv.health.polls
    await wait_for(lambda: pv.health.polls >= polls + 3, "more polls of the healthy unit")
    assert pv.health.quality is Quality.GOOD and pv.health.polls > polls
    assert "6" in (evse.health.last_error or "") or "BUSY" in (evse.health.last_error or "")
    await runner.clear_all_faults()
    await wait_for(lambda: all_good(daemon), "every device good again")
