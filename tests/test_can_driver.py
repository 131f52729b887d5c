"""The CAN driver against simulated nodes on an in-process python-can virtual bus: every
CAN template polled against its simulator, commands arriving with the right value,
refused writes, silent nodes, stuck and malformed frames."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import can
import pytest

from drivers.base import DeviceOffline, DeviceTimeout, UnknownPoint, WriteError
from drivers.can.dbc import resolution, signal_of
from drivers.can.device import CanDeviceIO
from drivers.can.driver import CanDriver
from drivers.can.template import CanTemplate
from drivers.template import load_template, template_names
from gateway.config.loader import load_config
from gateway.model import NATURES, Kind, Nature
from sim_devices.can_nodes import CanBusSim, build_can_buses
from sim_devices.physics.site import SimSite
from tests.waiting import WAIT_S, until

_channels = itertools.count()
DEVICE_FOR = {Nature.BMS: "bms", Nature.EVSE: "evse"}
CAN_TEMPLATES = [n for n in template_names() if isinstance(load_template(n), CanTemplate)]


def site_yaml(channel: str, interface: str = "virtual", frame_timeout_s: float = 1.0,
              devices: str | None = None) -> str:
    devices = devices or (
        "  - {id: bms1, nature: bms, template: pylontech_bms_can, connection: bus,\n"
        "     ratings: {capacity_kwh: 10}}\n"
        "  - {id: ev1, nature: evse, template: dc_charger_can, connection: bus,\n"
        "     ratings: {p_max_kw: 50}}\n")
    return (f"site: {{name: can test}}\ngateways: [{{id: gw}}]\nconnections:\n"
            f"  - {{id: bus, type: can, interface: {interface}, channel: '{channel}',\n"
            f"     frame_timeout_s: {frame_timeout_s}, reconnect_delay_s: 0.05,\n"
            f"     reconnect_delay_max_s: 0.2}}\n"
            f"devices:\n{devices}historian: {{enabled: false}}\n")


@dataclass
class Rig:
    site: SimSite
    bus: CanBusSim
    driver: CanDriver
    ios: dict[str, CanDeviceIO]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    path = tmp_path / "site.yaml"
    path.write_text(site_yaml(f"t{next(_channels)}-{tmp_path.name}"))
    cfg = load_config(path).config
    site = SimSite(cfg)
    (bus,) = build_can_buses(cfg, site).values()
    bus.set_period_scale(0.05)
    await bus.start()
    driver = CanDriver()
    ios = {d.id: driver.attach(d, load_template(d.template), cfg.connection(d.connection))
           for d in cfg.devices}
    try:
        yield Rig(site, bus, driver, ios)
    finally:
        await driver.close()
        await bus.stop()


def tolerance(tpl: CanTemplate, point: str) -> float:
    pt = tpl.points[point]
    assert pt.message is not None and pt.signal is not None
    sig = signal_of(tpl.message(pt.message), pt.signal)
    assert sig is not None
    return resolution(sig) * abs(pt.scale) + 1e-9


@pytest.mark.parametrize("template", CAN_TEMPLATES)
async def test_every_can_template_polled_against_its_simulator(rig: Rig, template: str
                                                               ) -> None:
    tpl = load_template(template)
    dev_id = next(d for d, io in rig.ios.items() if io.template is tpl)
    got = await rig.ios[dev_id].read()
    want = rig.bus.by_device[dev_id].points()
    assert set(got) == set(tpl.points)
    for name, value in got.items():
        kind = NATURES[tpl.nature][name].kind
        if tpl.points[name].flags is not None:
            assert value == 0, name  # nothing alarming in a fresh pack
        elif kind in (Kind.BOOL, Kind.STR):
            assert value == want[name], name
        else:
            assert isinstance(value, int | float)
            assert abs(value - float(want[name])) <= tolerance(tpl, name), (name, value,
                                                                           want[name])


async def test_bms_values_follow_the_physics(rig: Rig) -> None:
    pack = rig.site.models["bms1"].pack  # type: ignore[attr-defined]
    pack.soc_pct, pack.temp_c = 77.0, 61.0  # hot: over-temperature protection
    pack.i_a = 42.5  # + = discharge in the nature; the BMS frame says -42.5 (+ = charging)
    io = rig.ios["bms1"]
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        values = await io.read()
        # each value rides its own frame with its own period: wait for all of them
        if (values["soc_pct"] == 77.0 and values["alarms"] and values["i_pack_a"] == 42.5
                and abs(float(values["cell_temp_max_c"]) - 62.5) <= 1.0):
            break
        await asyncio.sleep(0.02)
    assert values["soc_pct"] == 77.0
    assert values["i_pack_a"] == 42.5
    assert values["cell_temp_max_c"] == pytest.approx(62.5, abs=1.0)
    flags = io.template.points["alarms"].flags
    assert flags is not None
    alarms = values["alarms"]
    assert isinstance(alarms, int)
    assert alarms & (1 << flags.index("ProtectOverTemp"))
    assert alarms & (1 << flags.index("AlarmHighTemp"))
    assert not alarms & (1 << flags.index("ProtectCellUnderVoltage"))


async def test_bms_current_limit_command_arrives(rig: Rig) -> None:
    io, node = rig.ios["bms1"], rig.bus.by_device["bms1"]
    await io.read()
    back = await io.write("i_charge_max_a", 12.3)
    assert back == 12.3
    assert node.requested["i_charge_max_a"] == 12.3  # type: ignore[attr-defined]
    name, signals = node.received[-1]
    assert name == "EMS_LimitRequest" and signals["ChargeCurrentRequest"] == 12.3
    assert signals["DischargeCurrentRequest"] == 6553.5  # not asked: no limit
    values = await io.read()
    assert values["i_charge_max_a"] == 12.3
    assert values["i_discharge_max_a"] > 50  # untouched
    await io.write("i_discharge_max_a", 20)
    _, signals = node.received[-1]
    assert signals == {"ChargeCurrentRequest": 12.3, "DischargeCurrentRequest": 20.0}


async def test_charger_commands_arrive_with_the_right_value(rig: Rig) -> None:
    io, evse = rig.ios["ev1"], rig.site.models["ev1"]
    await io.read()
    assert await io.write("p_set_kw", 7.25) == 7.25
    assert evse.p_set_kw == 7.25  # type: ignore[attr-defined]
    assert await io.write("enabled", False) is False
    assert evse.enabled is False  # type: ignore[attr-defined]
    assert evse.p_set_kw == 7.25  # type: ignore[attr-defined]  # the frame kept it
    assert await io.write("watchdog_s", 30) == 30
    assert evse.watchdog_s == 30  # type: ignore[attr-defined]
    _, signals = rig.bus.by_device["ev1"].received[-1]
    assert signals == {"PowerRequest": 7.25, "Enable": 0.0, "WatchdogTimeout": 30.0}
    values = await io.read()
    assert values["p_set_kw"] == 7.25 and values["enabled"] is False


async def test_refused_and_impossible_writes_are_errors(rig: Rig) -> None:
    io = rig.ios["ev1"]
    await io.read()
    with pytest.raises(WriteError, match=r"outside what EMS_ChargerControl\.PowerRequest"):
        await io.write("p_set_kw", 1000.0)
    with pytest.raises(UnknownPoint, match="read-only"):
        await io.write("p_kw", 1.0)
    with pytest.raises(UnknownPoint, match="not in the template"):
        await io.write("nonsense", 1.0)
    # the charger clamps to its 50 kW rating (no V2G car): the read-back shows it
    with pytest.raises(WriteError, match="reports 0"):
        await io.write("p_set_kw", -5.0)


async def test_silent_node_goes_offline_and_recovers(rig: Rig) -> None:
    io = rig.ios["bms1"]
    assert (await io.read())["soh_pct"] == 100.0
    await rig.bus.set_fault("bms1", "timeout")
    with pytest.raises(DeviceTimeout, match="no fresh frame within 1 s: BMS_"):
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            await io.read()
            await asyncio.sleep(0.02)
    assert (await rig.ios["ev1"].read())["p_max_kw"] == 50.0  # the bus itself is fine
    await rig.bus.clear_fault("bms1")
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            assert (await io.read())["soh_pct"] == 100.0
            break
        except DeviceTimeout:
            await asyncio.sleep(0.02)
    else:
        pytest.fail("bms1 did not recover")


async def test_stuck_frames_stop_following_the_physics(rig: Rig) -> None:
    io, pack = rig.ios["bms1"], rig.site.models["bms1"].pack  # type: ignore[attr-defined]
    await io.read()
    await rig.bus.set_fault("bms1", "stuck")
    pack.soc_pct = 12.0
    await asyncio.sleep(0.3)
    assert (await io.read())["soc_pct"] == 50.0
    await rig.bus.clear_fault("bms1", "stuck")
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if (await io.read())["soc_pct"] == 12.0:
            break
        await asyncio.sleep(0.02)
    assert (await io.read())["soc_pct"] == 12.0


async def test_malformed_frames_are_survived(rig: Rig) -> None:
    io = rig.ios["bms1"]
    await io.read()
    channel = rig.bus.conn.channel
    with can.Bus(interface="virtual", channel=channel) as rogue:
        rogue.send(can.Message(arbitration_id=0x355, data=b"\x07", is_extended_id=False))
        rogue.send(can.Message(arbitration_id=0x355, is_error_frame=True,
                               is_extended_id=False))
        rogue.send(can.Message(arbitration_id=0x7FF, data=b"\x01\x02", is_extended_id=False))
    await rig.bus.set_fault("bms1", "garbage")  # the node sends truncated frames
    await until(lambda: io.malformed > 3, "truncated frames counted")
    assert io.malformed > 3
    link = rig.driver.links[io.endpoint]
    assert link.counters["error_frames"] >= 1 and link.counters["unknown_ids"] >= 1
    await rig.bus.clear_fault("bms1")
    values: dict[str, Any] = {}
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            values = await io.read()
            break
        except DeviceTimeout:
            await asyncio.sleep(0.02)
    assert values["soc_pct"] == 50.0  # never the 7 % of the short frame


async def test_missing_interface_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(site_yaml("canX9", interface="socketcan"))
    cfg = load_config(path).config
    driver = CanDriver()
    dev = cfg.devices[0]
    io = driver.attach(dev, load_template(dev.template), cfg.connection("bus"))
    try:
        with pytest.raises(DeviceOffline, match="CAN interface 'canX9' does not exist"):
            await io.read()
        with pytest.raises(DeviceOffline, match="type vcan"):
            await io.read()
    finally:
        await driver.close()


async def test_attach_refuses_foreign_templates(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(site_yaml("x"))
    cfg = load_config(path).config
    driver = CanDriver()
    with pytest.raises(Exception, match="not a CAN template"):
        driver.attach(cfg.devices[0], load_template("generic_bess"), cfg.connection("bus"))
    await driver.close()


async def test_a_detached_device_refuses_writes(rig: Rig) -> None:
    """Once detached (a reload removed it), a write is refused and counted; no command
    frame goes out for a device the daemon no longer owns, though its bus stays up."""
    io = rig.ios["ev1"]
    await io.read()
    sent = len(rig.bus.by_device["ev1"].received)
    await io.close()
    with pytest.raises(DeviceOffline, match="ev1: detached from"):
        await io.write("p_set_kw", 5.0)
    assert io.stats.errors == 1 and "detached" in (io.stats.last_error or "")
    assert len(rig.bus.by_device["ev1"].received) == sent
    assert await rig.ios["bms1"].read()  # the other device on the bus still reads
