"""The DNP3 master against a real simulated outstation behind a fault proxy
(tests/dnp3_proxy.py): what it owes the outstation (restart, time, overflow), how it
names broken frames, what it publishes for flagged points, what its commands claim, and
how it lives through unsolicited responses it did not ask for."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from dnp3.core.enums import FunctionCode
from dnp3.core.flags import IIN

from drivers.base import DriverError, WriteError
from drivers.dnp3.device import CommandRefused, Dnp3DeviceIO
from drivers.dnp3.driver import Dnp3Driver
from drivers.template import load_template
from gateway.config.loader import load_config
from gateway.model import Invalid
from sim_devices.dnp3_server import Dnp3Server
from sim_devices.runner import SimRunner
from tests.dnp3_proxy import Dnp3FaultProxy, Request
from tests.waiting import until_async

SITE = """\
site: {{name: dnp3 faults}}
gateways: [{{id: gw1}}]
connections:
  - {{id: pcc, type: dnp3_tcp, host: 127.0.0.1, port: 20000, outstation_address: 10,
     class1_interval_s: 0.02, class2_interval_s: 0.02, class3_interval_s: 3600,
     integrity_interval_s: 3600, reconnect_delay_s: 0.05, reconnect_delay_max_s: 0.2,
     timeout_s: 0.5, command_timeout_s: 0.5, time_sync: {sync}}}
  - {{id: bat, type: dnp3_tcp, host: 127.0.0.1, port: 20001, outstation_address: 20,
     class1_interval_s: 0, class2_interval_s: 0, class3_interval_s: 0,
     integrity_interval_s: 3600, reconnect_delay_s: 0.05, timeout_s: 0.5}}
devices:
  - {{id: pcc_breaker, nature: breaker, template: dnp3_pcc_relay, connection: pcc}}
  - {{id: pcc_meter, nature: meter, template: dnp3_pcc_meter, connection: pcc, role: grid}}
  - {{id: bess1, nature: bess, template: dnp3_mesa_bess, connection: bat,
     ratings: {{p_charge_max_kw: 100, p_discharge_max_kw: 100, capacity_kwh: 200}}}}
"""


@dataclass
class Rig:
    sim: SimRunner
    proxy: dict[str, Dnp3FaultProxy]
    io: dict[str, Dnp3DeviceIO]

    def server(self, conn: str) -> Dnp3Server:
        server = self.sim.endpoints[conn]
        assert isinstance(server, Dnp3Server)
        return server


async def _rig(tmp_path: Path, sync: str = "lan") -> AsyncIterator[Rig]:
    path = tmp_path / "site.yaml"
    path.write_text(SITE.format(sync=sync))
    cfg = load_config(path).config
    sim = SimRunner(cfg, port_overrides={"pcc": 0, "bat": 0})
    ports = await sim.start()
    driver = Dnp3Driver()
    proxies = {"pcc": Dnp3FaultProxy(ports["pcc"], outstation=10),
               "bat": Dnp3FaultProxy(ports["bat"], outstation=20)}
    try:
        for p in proxies.values():
            await p.start()
        conns = {c.id: c.model_copy(update={"port": proxies[c.id].port})
                 for c in cfg.connections}
        ios = {}
        for dev in cfg.devices:
            io = driver.attach(dev, load_template(dev.template), conns[dev.connection])
            assert isinstance(io, Dnp3DeviceIO)
            ios[dev.id] = io
        yield Rig(sim, proxies, ios)
    finally:
        await driver.close()
        for p in proxies.values():
            await p.close()
        await sim.stop()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async for r in _rig(tmp_path):
        yield r


def _lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def _count(proxy: Dnp3FaultProxy, pred: Callable[[Request], bool]) -> int:
    return len(proxy.seen(pred))


def _is_integrity(r: Request) -> bool:
    return r.integrity


def _clears_restart(r: Request) -> bool:
    return r.clears_restart


async def _read_until(io: Dnp3DeviceIO, pred: Callable[[], bool], what: str) -> None:
    async def step() -> bool:
        await io.read()
        return pred()
    await until_async(step, what)


# ---- what the master owes the outstation ----------------------------------------------


async def test_restart_is_answered_by_an_integrity_poll_then_a_clear_once_each(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "drivers.dnp3")
    meter, proxy = rig.io["pcc_meter"], rig.proxy["pcc"]
    await meter.read()  # the simulated outstation starts with IIN1.7 set, as a real one
    assert _count(proxy, _is_integrity) == 1  # the connect poll stands for the restart's
    assert _count(proxy, _clears_restart) == 1
    # the outstation restarts again: IIN1.7 on every answer until the master clears it
    proxy.iin_until[IIN.DEVICE_RESTART] = _clears_restart
    await _read_until(meter, lambda: _count(proxy, _clears_restart) == 2, "second clear")
    for _ in range(5):
        await meter.read()
    assert _count(proxy, _is_integrity) == 2 and _count(proxy, _clears_restart) == 2
    requests = proxy.requests
    last_integrity = max(i for i, r in enumerate(requests) if r.integrity)
    last_clear = max(i for i, r in enumerate(requests) if r.clears_restart)
    assert last_integrity < last_clear  # integrity poll first, then the clear
    assert meter.stats.extra["restarts"] == 2 and meter.stats.extra["restart_clears"] == 2
    lines = _lines(caplog, "restarted (IIN1.7 DEVICE_RESTART)")
    assert len(lines) == 2, lines
    assert f"127.0.0.1:{proxy.port} (outstation 10)" in lines[-1]


def _synced_lan(r: Request) -> bool:
    return r.written_time_ms(3) is not None


async def test_need_time_is_answered_by_lan_time_sync_once(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "drivers.dnp3")
    meter, proxy = rig.io["pcc_meter"], rig.proxy["pcc"]
    meter.link.clock = lambda: 1_700_000_000.25  # the wall clock the master writes
    await meter.read()
    proxy.iin_until[IIN.NEED_TIME] = _synced_lan
    await _read_until(meter, lambda: _count(proxy, _synced_lan) == 1, "a g50v3 time write")
    for _ in range(5):
        await meter.read()
    assert _count(proxy, _synced_lan) == 1
    functions = [r.function for r in proxy.requests]
    write = max(i for i, r in enumerate(proxy.requests) if _synced_lan(r))
    assert functions[write - 1] == FunctionCode.RECORD_CURRENT_TIME
    assert proxy.requests[write].written_time_ms(3) == 1_700_000_000_250
    assert FunctionCode.DELAY_MEASURE not in functions
    assert meter.stats.extra["time_requests"] == 1 and meter.stats.extra["time_syncs"] == 1
    assert len(_lines(caplog, "asks for the time (IIN1.4 NEED_TIME)")) == 1


@pytest.fixture
async def non_lan_rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async for r in _rig(tmp_path, sync="non_lan"):
        yield r


async def test_need_time_non_lan_uses_delay_measure(non_lan_rig: Rig) -> None:
    meter, proxy = non_lan_rig.io["pcc_meter"], non_lan_rig.proxy["pcc"]
    meter.link.clock = lambda: 1_700_000_000.0
    await meter.read()
    proxy.iin_until[IIN.NEED_TIME] = lambda r: r.written_time_ms(1) is not None
    await _read_until(meter, lambda: meter.stats.extra.get("time_syncs") == 1,
                      "a g50v1 time write")
    requests = proxy.requests
    write = next(i for i, r in enumerate(requests) if r.written_time_ms(1) is not None)
    assert requests[write - 1].function == FunctionCode.DELAY_MEASURE
    assert FunctionCode.RECORD_CURRENT_TIME not in [r.function for r in requests]
    written = requests[write].written_time_ms(1)
    assert written is not None
    # the clock plus a one-way delay, which is never negative and never longer than the
    # exchange it was measured on (timeout_s 0.5)
    assert 1_700_000_000_000 <= written <= 1_700_000_000_000 + 500


async def test_event_buffer_overflow_is_answered_by_one_integrity_poll(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "drivers.dnp3")
    meter, proxy = rig.io["pcc_meter"], rig.proxy["pcc"]
    await meter.read()
    assert _count(proxy, _is_integrity) == 1
    proxy.iin_until[IIN.EVENT_BUFFER_OVERFLOW] = _is_integrity
    await _read_until(meter, lambda: _count(proxy, _is_integrity) == 2, "an integrity poll")
    for _ in range(5):
        await meter.read()
    assert _count(proxy, _is_integrity) == 2
    assert meter.stats.extra["event_overflows"] == 1
    assert len(_lines(caplog, "EVENT_BUFFER_OVERFLOW")) == 1


# ---- broken frames are named ----------------------------------------------------------


async def test_bad_crc_is_named_once_per_episode(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "drivers.dnp3")
    meter, proxy = rig.io["pcc_meter"], rig.proxy["pcc"]
    await meter.read()
    name = f"bad CRC from 127.0.0.1:{proxy.port} (outstation 10)"
    for episode in (1, 2):
        for _ in range(3):
            proxy.corrupt_crc = 1  # the first frame of the answer
            meter.link.after_command()  # an integrity poll is due: an exchange now
            with pytest.raises(DriverError, match=re.escape(name)):
                await meter.read()
        assert len(_lines(caplog, name)) == episode
        await meter.read()  # whole frames again: the episode ends
    assert meter.stats.extra["bad_crc"] == 6


async def test_truncated_frame_is_named(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "drivers.dnp3")
    meter, proxy = rig.io["pcc_meter"], rig.proxy["pcc"]
    await meter.read()
    proxy.truncate = 1
    meter.link.after_command()
    name = f"truncated frame from 127.0.0.1:{proxy.port} (outstation 10)"
    with pytest.raises(DriverError, match=re.escape(name)):
        await meter.read()
    assert len(_lines(caplog, name)) == 1
    assert meter.stats.extra["truncated"] == 1
    assert (await meter.read())["f_hz"] is not None


# ---- points the outstation flags ------------------------------------------------------


async def test_flagged_points_are_published_invalid(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "drivers.dnp3")
    meter, server = rig.io["pcc_meter"], rig.server("pcc")
    assert isinstance((await meter.read())["p_kw"], float)
    server.flags[(30, 10)] = 0x01 | 0x04  # p_kw: online but its source is lost
    server.flags[(30, 12)] = 0x01 | 0x20  # v_v: over range
    server.flags[(20, 0)] = 0x00  # e_import_kwh: offline
    for _ in range(3):
        meter.link.after_command()
        got = await meter.read()
    p_kw, v_v, e_imp = got["p_kw"], got["v_v"], got["e_import_kwh"]
    assert isinstance(p_kw, Invalid) and "COMM_LOST" in p_kw.why
    assert isinstance(p_kw.raw, float)  # the value is kept for diagnostics
    assert isinstance(v_v, Invalid) and "OVER_RANGE" in v_v.why
    assert isinstance(e_imp, Invalid) and "OFFLINE" in e_imp.why
    assert isinstance(got["f_hz"], float)
    assert len(_lines(caplog, "published as invalid")) == 1  # one line per episode
    server.flags.clear()
    meter.link.after_command()
    assert isinstance((await meter.read())["p_kw"], float)


# ---- commands tell the truth ----------------------------------------------------------


async def test_refused_operate_of_sbo_names_the_step_and_status(rig: Rig) -> None:
    bess, proxy = rig.io["bess1"], rig.proxy["bat"]
    await bess.read()
    proxy.command_status[FunctionCode.OPERATE] = 1  # TIMEOUT: the select ran out
    with pytest.raises(CommandRefused, match=r"OPERATE\): TIMEOUT") as err:
        await bess.write("watchdog_s", 30)
    assert "SELECT" not in str(err.value)
    proxy.command_status = {FunctionCode.DIRECT_OPERATE: 4}
    with pytest.raises(WriteError, match="NOT_SUPPORTED"):
        await bess.write("p_set_kw", 10.0)


async def test_crob_refused_with_local_is_an_error(rig: Rig) -> None:
    brk, proxy = rig.io["pcc_breaker"], rig.proxy["pcc"]
    await brk.read()
    proxy.command_status[FunctionCode.DIRECT_OPERATE] = 7
    with pytest.raises(WriteError, match="LOCAL"):
        await brk.write("trip", True)


async def test_crob_whose_effect_never_shows_is_an_error(rig: Rig) -> None:
    brk = rig.io["pcc_breaker"]
    assert (await brk.read())["closed"] is True
    await rig.sim.set_fault("pcc_breaker", "stuck")  # takes the command, status frozen
    with pytest.raises(WriteError, match="'closed' still reads True"):
        await brk.write("trip", True)
    await rig.sim.clear_fault("pcc_breaker")
    await brk.write("close", True)  # the breaker did open; close it, verified
    assert (await brk.read())["closed"] is True


# ---- unsolicited responses nobody asked for -------------------------------------------


async def test_unsolicited_flood_is_ignored_without_starving_polls(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "drivers.dnp3")
    meter, proxy = rig.io["pcc_meter"], rig.proxy["pcc"]
    await meter.read()
    polls = meter.link.counts["class1"]
    proxy.start_flood(every_s=0.002, index=10, raw=9_999_999)  # p_kw = 99999.99 kW
    seen: list[object] = []

    async def polled() -> bool:
        seen.append((await meter.read())["p_kw"])
        return meter.link.counts["class1"] >= polls + 20 and proxy.uns_confirms >= 50
    await until_async(polled, "polls and confirms during the flood")
    await proxy.stop_flood()
    assert all(isinstance(v, float) and v < 99_999 for v in seen), seen
    assert meter.stats.extra["unsolicited_ignored"] >= 50
    lines = _lines(caplog, "although unsolicited is off")
    assert len(lines) == 1, lines
    disables = _count(proxy, lambda r: r.function == FunctionCode.DISABLE_UNSOLICITED)
    assert disables == 1
