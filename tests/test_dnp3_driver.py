"""DNP3 driver against the simulated outstations (dnp3py) on the shared physics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers.base import DeviceOffline, DriverError, UnknownPoint, WriteError
from drivers.dnp3.device import CommandRefused, Dnp3DeviceIO
from drivers.dnp3.driver import Dnp3Driver
from drivers.registry import driver_for_connection_type
from drivers.template import load_template, template_names
from gateway.config.loader import check_config, load_config
from gateway.config.models import SiteConfig
from sim_devices.dnp3_server import Dnp3Server
from sim_devices.runner import SimRunner
from tests.waiting import WAIT_S

SITE = """\
site: {{name: dnp3 test}}
gateways: [{{id: gw1}}]
connections:
  - {{id: pcc, type: dnp3_tcp, host: 127.0.0.1, port: 20000, outstation_address: 10,
     class1_interval_s: {c1}, class2_interval_s: {c1}, class3_interval_s: 3600,
     integrity_interval_s: 3600, reconnect_delay_s: 0.05, reconnect_delay_max_s: 0.2,
     timeout_s: 1.0}}
  - {{id: bat, type: dnp3_tcp, host: 127.0.0.1, port: 20001, outstation_address: 20,
     unsolicited: {unsol}, class1_interval_s: 0, class2_interval_s: 0,
     class3_interval_s: 0, integrity_interval_s: 3600, reconnect_delay_s: 0.05,
     timeout_s: 1.0}}
devices:
  - {{id: pcc_breaker, nature: breaker, template: dnp3_pcc_relay, connection: pcc}}
  - {{id: pcc_meter, nature: meter, template: dnp3_pcc_meter, connection: pcc, role: grid}}
  - {{id: bess1, nature: bess, template: dnp3_mesa_bess, connection: bat,
     ratings: {{p_charge_max_kw: 100, p_discharge_max_kw: 100, capacity_kwh: 200}}}}
"""


@dataclass
class Site:
    cfg: SiteConfig
    sim: SimRunner
    driver: Dnp3Driver
    io: dict[str, Dnp3DeviceIO]


async def _site(tmp_path: Path, *, c1: float = 0.0, unsol: bool = False
                ) -> AsyncIterator[Site]:
    path = tmp_path / "site.yaml"
    path.write_text(SITE.format(c1=c1, unsol=str(unsol).lower()))
    cfg = load_config(path).config
    sim = SimRunner(cfg, port_overrides={"pcc": 0, "bat": 0})
    ports = await sim.start()
    driver = Dnp3Driver()
    try:
        conns = {c.id: c.model_copy(update={"port": ports[c.id]}) for c in cfg.connections}
        ios = {}
        for dev in cfg.devices:
            io = driver.attach(dev, load_template(dev.template), conns[dev.connection])
            assert isinstance(io, Dnp3DeviceIO)
            ios[dev.id] = io
        yield Site(cfg, sim, driver, ios)
    finally:
        await driver.close()
        await sim.stop()


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async for s in _site(tmp_path, c1=0.0):
        yield s


def test_registry_and_templates() -> None:
    assert driver_for_connection_type("dnp3_tcp") == "dnp3"
    dnp3 = [n for n in template_names() if load_template(n).protocol == "dnp3"]
    assert set(dnp3) >= {"dnp3_pcc_relay", "dnp3_pcc_meter", "dnp3_mesa_bess"}


async def test_every_dnp3_template_polled_against_its_simulator(site: Site) -> None:
    site.sim.step(1.0)
    for dev_id, io in site.io.items():
        got = await io.read()
        model = site.sim.values(dev_id)
        tpl = io.template
        assert set(got) == {n for n, p in tpl.points.items() if p.readable}, dev_id
        for name, value in got.items():
            assert value is not None, (dev_id, name)
            want = model[name]
            if isinstance(want, bool | str):
                assert value == want, (dev_id, name)
            else:
                step = abs(tpl.points[name].scale)  # one raw count of resolution
                assert value == pytest.approx(want, abs=step), (dev_id, name)
    # the breaker and the meter share one outstation, one link, one integrity poll
    assert site.io["pcc_breaker"].endpoint == site.io["pcc_meter"].endpoint
    assert site.io["pcc_meter"].link.counts["integrity"] == 1
    assert site.io["pcc_meter"].read is not None


async def test_float_setpoint_arrives_as_float_and_reads_back(site: Site) -> None:
    bess = site.io["bess1"]
    assert await bess.write("p_set_kw", 12.5) == pytest.approx(12.5)
    assert site.sim.values("bess1")["p_set_kw"] == 12.5  # g41v3: not 12, not 13
    server = site.sim.endpoints["bat"]
    assert isinstance(server, Dnp3Server)
    assert ("bess1", "p_set_kw", 12.5) in server.commands
    assert bess.last_status is not None and bess.last_status.ok
    # watchdog_s is an int32 output commanded with Select Before Operate
    assert await bess.write("watchdog_s", 30) == 30
    assert site.sim.values("bess1")["watchdog_s"] == 30


async def test_trip_and_close_by_crob(site: Site) -> None:
    brk = site.io["pcc_breaker"]
    assert (await brk.read())["closed"] is True
    assert await brk.write("trip", True) is None  # command-only point
    assert site.sim.values("pcc_breaker")["closed"] is False
    assert (await brk.read())["closed"] is False  # class 1 event or integrity after command
    await brk.write("close", True)
    assert site.sim.values("pcc_breaker")["closed"] is True
    with pytest.raises(WriteError, match="true only"):
        await brk.write("trip", False)
    with pytest.raises(UnknownPoint):
        await brk.write("closed", True)


async def test_refused_command_is_an_error_with_the_status(site: Site) -> None:
    await site.sim.set_fault("bess1", "exception")
    with pytest.raises(CommandRefused, match="HARDWARE_ERROR") as err:
        await site.io["bess1"].write("p_set_kw", 20.0)
    assert err.value.status.status == 6 and err.value.status.index == 0
    assert site.sim.values("bess1")["p_set_kw"] != 20.0
    await site.sim.clear_fault("bess1")
    assert await site.io["bess1"].write("p_set_kw", 20.0) == pytest.approx(20.0)


async def test_link_loss_and_recovery_with_integrity_poll(site: Site) -> None:
    meter = site.io["pcc_meter"]
    await meter.read()
    link = meter.link
    await site.sim.set_fault("pcc_meter", "refuse")
    await site.sim.set_fault("pcc_meter", "drop")
    with pytest.raises(DeviceOffline):
        await meter.read()
    with pytest.raises(DeviceOffline):  # inside the backoff or refused again
        await meter.read()
    await site.sim.clear_fault("pcc_meter")

    async def recovered() -> bool:
        try:
            await meter.read()
        except DriverError:
            return False
        return True

    deadline = time.monotonic() + WAIT_S
    while not await recovered():
        assert time.monotonic() < deadline, "link did not recover"
        await asyncio.sleep(0.05)
    assert meter.stats.reconnects + site.io["pcc_breaker"].stats.reconnects >= 1
    assert link.connects >= 2 and link.counts["integrity"] >= 2  # integrity after reconnect
    assert (await site.io["pcc_breaker"].read())["closed"] is True


async def test_malformed_and_silent_responses_survived(site: Site) -> None:
    bess = site.io["bess1"]
    await bess.read()
    for kind in ("garbage", "timeout"):
        await site.sim.set_fault("bess1", kind)
        bess.link._due[0] = 1.0  # force an exchange now (integrity poll due)
        malformed = bess.link.malformed_received
        try:
            await bess.read()
        except DriverError:
            pass  # a timeout, or a response too broken to use
        else:  # answered, but the parser cut the nonsense short and kept nothing of it
            assert kind == "garbage" and bess.link.malformed_received > malformed
        await site.sim.clear_fault("bess1")
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                got = await bess.read()
                break
            except DriverError:
                assert time.monotonic() < deadline, f"no recovery after {kind}"
                await asyncio.sleep(0.05)
        assert got["soc_pct"] == pytest.approx(site.sim.values("bess1")["soc_pct"], abs=0.1)


async def test_class_polls_run_at_their_own_intervals(tmp_path: Path) -> None:
    async for s in _site(tmp_path, c1=0.05):
        brk = s.io["pcc_breaker"]
        await brk.read()
        s.sim.site.models["pcc_breaker"].write_point("trip", True)  # a local trip
        assert s.sim.values("pcc_breaker")["closed"] is False
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if (await brk.read())["closed"] is False:
                break
            await asyncio.sleep(0.02)
        counts = brk.link.counts
        assert (await brk.read())["closed"] is False
        assert counts["integrity"] == 1  # the change came as a class 1 event
        assert counts["class1"] >= 1 and counts["class3"] == 0


async def test_unsolicited_events_reach_the_master(tmp_path: Path) -> None:
    async for s in _site(tmp_path, unsol=True):
        bess = s.io["bess1"]
        await bess.read()
        s.sim.site.models["bess1"].write_point("p_set_kw", -33.0)  # local change
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if (await bess.read())["p_set_kw"] == pytest.approx(-33.0):
                break
            await asyncio.sleep(0.02)
        assert (await bess.read())["p_set_kw"] == pytest.approx(-33.0)
        counts = bess.link.counts
        assert counts["class1"] == counts["class2"] == counts["class3"] == 0
        assert counts["integrity"] == 1
        assert bess.link.unsolicited_received >= 1


def test_check_positions_dnp3_errors(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    text = SITE.format(c1=1, unsol="false")
    text = text.replace("outstation_address: 20,", "outstation_adress: 20,")
    text = text.replace("template: dnp3_pcc_meter, connection: pcc",
                        "template: dnp3_pcc_meter, connection: bat")
    path.write_text(text)
    problems = [str(p) for p in check_config(path)]
    assert any(":8:" in p and "outstation_adress" in p for p in problems), problems
    path.write_text(SITE.format(c1=1, unsol="false").replace(
        "template: dnp3_mesa_bess", "template: generic_bess"))
    problems = [str(p) for p in check_config(path)]
    assert any("speaks modbus" in p and ":15:" in p for p in problems), problems


def test_template_errors_are_positioned(tmp_path: Path) -> None:
    from drivers.template import load_template_file
    from gateway.yamlsrc import SourceError

    bad = tmp_path / "bad.yaml"
    bad.write_text("protocol: dnp3\nnature: bess\npoints:\n  soc_pct:\n    group: 31\n"
                   "    index: 0\n  p_kw:\n    group: 30\n    index: 0\n"
                   "  p_set_kw:\n    command: {group: 12, index: 0}\n")
    with pytest.raises(SourceError) as err:
        load_template_file(bad)
    text = str(err.value)
    assert "bad.yaml:5:12" in text and "points.soc_pct.group" in text
    bad.write_text("protocol: dnp3\nnature: bess\npoints:\n  p_kw:\n    group: 30\n"
                   "    index: 0\n  soc_pct:\n    group: 30\n    index: 0\n"
                   "  p_set_kw:\n    command: {group: 12, index: 0}\n")
    with pytest.raises(SourceError) as err:
        load_template_file(bad)
    text = str(err.value)
    assert "analog output (group 41)" in text
    bad.write_text("protocol: dnp3\nnature: bess\npoints:\n  p_kw:\n    group: 30\n"
                   "    index: 0\n  soc_pct:\n    group: 30\n    index: 0\n")
    with pytest.raises(SourceError) as err:
        load_template_file(bad)
    assert "bad.yaml:9:12: points.soc_pct.index: group 30 index 0 is already point 'p_kw'" \
        in str(err.value)
