"""The simulated Modbus devices, read and written with a plain pymodbus client.

Real servers on 127.0.0.1 port 0, the real physics (SimSite), every template served.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.framer import FramerType

from drivers.codec import decode, encode
from drivers.template import Function, ModbusPoint, ModbusTemplate, load_template, template_names
from gateway.config.models import SiteConfig
from gateway.model import PointValue
from sim_devices.runner import SimRunner

# One device per template on one TCP endpoint (unit ids 1..7), two devices behind an
# RTU-over-TCP endpoint, and one on a serial line (not served by the simulator).
DEVICES: list[dict[str, Any]] = [
    {"id": "pv1", "nature": "pv_inverter", "template": "sunspec_inverter", "connection": "tcp1",
     "unit_id": 1, "ratings": {"p_max_kw": 50, "kwp": 55}},
    {"id": "bess1", "nature": "bess", "template": "generic_bess", "connection": "tcp1",
     "unit_id": 2, "ratings": {"capacity_kwh": 200, "p_max_kw": 100}},
    {"id": "ev1", "nature": "evse", "template": "generic_evse", "connection": "tcp1",
     "unit_id": 3, "ratings": {"p_max_kw": 22}},
    {"id": "meter1", "nature": "meter", "template": "meter_3ph", "connection": "tcp1",
     "unit_id": 4},
    {"id": "brk1", "nature": "breaker", "template": "generic_breaker", "connection": "tcp1",
     "unit_id": 5, "ratings": {"i_max_a": 400}},
    {"id": "load1", "nature": "load", "template": "generic_load", "connection": "tcp1",
     "unit_id": 6, "ratings": {"p_max_kw": 30}},
    {"id": "wind1", "nature": "wind_turbine", "template": "generic_wind", "connection": "tcp1",
     "unit_id": 7, "ratings": {"p_max_kw": 100}},
    {"id": "meter2", "nature": "meter", "template": "meter_3ph", "connection": "rtu1",
     "unit_id": 3},
    {"id": "bess2", "nature": "bess", "template": "generic_bess", "connection": "rtu1",
     "unit_id": 4, "ratings": {"capacity_kwh": 50, "p_max_kw": 25}},
    {"id": "load9", "nature": "load", "template": "generic_load", "connection": "ser1",
     "unit_id": 1},
]


def site_config(devices: list[dict[str, Any]] | None = None) -> SiteConfig:
    return SiteConfig.model_validate({
        "site": {"name": "test", "latitude": 52.5, "longitude": 13.4},
        "gateways": [{"id": "gw1"}],
        "connections": [
            {"id": "tcp1", "type": "modbus_tcp", "host": "127.0.0.1", "port": 1502},
            {"id": "rtu1", "type": "modbus_rtu_over_tcp", "host": "127.0.0.1", "port": 1503},
            {"id": "ser1", "type": "modbus_serial", "port": "/dev/ttyUSB0"},
        ],
        "devices": DEVICES if devices is None else devices,
        # Noon in June: the PV and the wind have something to show.
        "simulation": {"clock": {"start": "2024-06-21T11:00:00Z"}},
    })


@pytest.fixture
async def runner() -> AsyncIterator[SimRunner]:
    # step_s is long so no background step moves the values while a test compares them.
    r = SimRunner(site_config(), port_overrides={"tcp1": 0, "rtu1": 0}, step_s=3600)
    await r.start()
    r.step(300.0)
    try:
        yield r
    finally:
        await r.stop()


async def connect(runner: SimRunner, conn_id: str) -> AsyncModbusTcpClient:
    framer = FramerType.RTU if conn_id == "rtu1" else FramerType.SOCKET
    client = AsyncModbusTcpClient("127.0.0.1", port=runner.ports[conn_id], framer=framer,
                                  timeout=0.5, retries=0, reconnect_delay=0)
    assert await client.connect()
    return client


async def read_raw(client: AsyncModbusTcpClient, unit: int, pt: ModbusPoint) -> Any:
    f = pt.function
    if f is Function.COIL:
        return await client.read_coils(pt.address, count=1, device_id=unit)
    if f is Function.DISCRETE:
        return await client.read_discrete_inputs(pt.address, count=1, device_id=unit)
    if f is Function.INPUT:
        return await client.read_input_registers(pt.address, count=pt.width, device_id=unit)
    return await client.read_holding_registers(pt.address, count=pt.width, device_id=unit)


async def read_point(client: AsyncModbusTcpClient, unit: int, pt: ModbusPoint
                     ) -> tuple[PointValue | None, int | None]:
    """Decoded value and the SunSpec scale factor exponent it was read with."""
    rr = await read_raw(client, unit, pt)
    assert not rr.isError(), rr
    if pt.function.is_bit:
        return bool(rr.bits[0]), None
    sf = None
    if pt.scale_factor is not None:
        sr = await client.read_holding_registers(pt.scale_factor, count=1, device_id=unit)
        assert not sr.isError(), sr
        sf = sr.registers[0] - 0x10000 if sr.registers[0] & 0x8000 else sr.registers[0]
    return decode(pt, rr.registers, sf), sf


def assert_close(name: str, pt: ModbusPoint, got: PointValue | None, want: PointValue | None,
                 sf: int | None) -> None:
    if want is None:
        assert got is None, name
        return
    if isinstance(want, bool | str) or pt.enum is not None:
        assert got == want, f"{name}: read {got!r}, model {want!r}"
        return
    assert isinstance(got, float), f"{name}: read {got!r}"
    if pt.type == "float32":
        assert math.isclose(got, float(want), rel_tol=1e-6, abs_tol=1e-9), (name, got, want)
        return
    step = abs(pt.scale) * (10.0 ** sf if sf is not None else 1.0)
    assert abs(got - float(want)) <= step / 2 + 1e-9, f"{name}: read {got}, model {want}"


async def test_every_template_is_served_and_reads_back_the_model(runner: SimRunner) -> None:
    served = {d["template"] for d in DEVICES if d["id"] in runner.images}
    assert served == {n for n in template_names() if load_template(n).protocol == "modbus"}
    nonzero = 0
    for conn_id in ("tcp1", "rtu1"):
        client = await connect(runner, conn_id)
        try:
            for dev in (d for d in DEVICES if d["connection"] == conn_id):
                tpl: ModbusTemplate = load_template(dev["template"])
                model = runner.values(dev["id"])
                for name, pt in tpl.points.items():
                    got, sf = await read_point(client, dev["unit_id"], pt)
                    assert_close(f"{dev['id']}.{name}", pt, got, model.get(name), sf)
                    nonzero += bool(got)
        finally:
            client.close()
    assert nonzero > 40  # the comparison is not between zeros


async def test_registers_follow_the_physics_after_a_step(runner: SimRunner) -> None:
    pt = load_template("generic_bess").points["e_charged_kwh"]
    client = await connect(runner, "tcp1")
    try:
        await write_point(client, 2, load_template("generic_bess").points["p_set_kw"], -50.0)
        before, _ = await read_point(client, 2, pt)
        runner.step(3600.0)  # one hour charging at 50 kW
        after, _ = await read_point(client, 2, pt)
    finally:
        client.close()
    assert isinstance(before, float) and isinstance(after, float)
    assert after - before == pytest.approx(50.0, abs=1.0)
    assert after == pytest.approx(runner.values("bess1")["e_charged_kwh"], abs=0.05)


async def write_point(client: AsyncModbusTcpClient, unit: int, pt: ModbusPoint,
                      value: PointValue) -> Any:
    if pt.function is Function.COIL:
        return await client.write_coil(pt.address, bool(value), device_id=unit)
    return await client.write_registers(pt.address, encode(pt, value), device_id=unit)


async def test_a_write_is_clamped_and_read_back_shows_the_clamp(runner: SimRunner) -> None:
    tpl = load_template("generic_bess")
    client = await connect(runner, "tcp1")
    try:
        rr = await write_point(client, 2, tpl.points["p_set_kw"], 1000.0)
        assert not rr.isError(), rr
        got, _ = await read_point(client, 2, tpl.points["p_set_kw"])
        pv = load_template("sunspec_inverter").points["p_limit_pct"]
        # 150 % in the SunSpec registers: raw 1500 at WMaxLimPct_SF = -1
        rr = await client.write_register(pv.address, 1500, device_id=1)
        assert not rr.isError(), rr
        limit, sf = await read_point(client, 1, pv)
    finally:
        client.close()
    assert got == 100.0  # the battery's 100 kW rating
    assert runner.values("bess1")["p_set_kw"] == 100.0
    assert sf == -1 and limit == pytest.approx(100.0)
    assert runner.values("pv1")["p_limit_pct"] == 100.0


async def test_bad_writes_give_exception_responses(runner: SimRunner) -> None:
    bess = load_template("generic_bess")
    client = await connect(runner, "tcp1")
    try:
        nan = await client.write_registers(bess.points["p_set_kw"].address, [0x7FC0, 0],
                                           device_id=2)
        read_only = await client.write_registers(bess.points["soc_pct"].address, [500],
                                                 device_id=2)
        half = await client.write_register(bess.points["p_set_kw"].address, 0x4120,
                                           device_id=2)
        still, _ = await read_point(client, 2, bess.points["p_set_kw"])
    finally:
        client.close()
    assert nan.isError() and nan.exception_code == 3  # ILLEGAL DATA VALUE
    assert read_only.isError() and read_only.exception_code == 2  # ILLEGAL DATA ADDRESS
    assert half.isError() and half.exception_code == 2  # half of a float32
    assert still == runner.values("bess1")["p_set_kw"] == 0.0


async def test_coils_command_the_breaker_and_discrete_inputs_show_it(runner: SimRunner
                                                                     ) -> None:
    tpl = load_template("generic_breaker")
    client = await connect(runner, "tcp1")
    try:
        closed_before, _ = await read_point(client, 5, tpl.points["closed"])
        rr = await write_point(client, 5, tpl.points["trip"], True)
        assert not rr.isError(), rr
        runner.step(1.0)
        closed_after, _ = await read_point(client, 5, tpl.points["closed"])
        trip, _ = await read_point(client, 5, tpl.points["trip"])
    finally:
        client.close()
    assert closed_before is True and closed_after is False and trip is True
    assert runner.values("brk1")["closed"] is False


async def test_two_devices_behind_one_endpoint_are_told_apart_by_unit_id(runner: SimRunner
                                                                          ) -> None:
    soc = load_template("generic_bess").points["capacity_kwh"]
    client = await connect(runner, "rtu1")
    try:
        cap4, _ = await read_point(client, 4, soc)
        meter_v, _ = await read_point(client, 3, load_template("meter_3ph").points["v_l1_v"])
        with pytest.raises(ModbusIOException):  # an absent unit stays silent on an RTU line
            await client.read_holding_registers(0, count=1, device_id=9)
    finally:
        client.close()
    assert cap4 == 50.0  # bess2 on rtu1, not bess1 (200 kWh) on tcp1
    assert meter_v == pytest.approx(runner.values("meter2")["v_l1_v"], rel=1e-6)


async def test_serial_devices_are_reported_not_served(runner: SimRunner) -> None:
    assert "load9" not in runner.images
    info = {d["id"]: d for d in runner.devices()}
    assert info["load9"]["served"] is False
    assert "modbus_serial" in info["load9"]["skipped"]
    assert set(runner.ports) == {"tcp1", "rtu1"}
    assert all(p > 0 for p in runner.ports.values())


async def test_watchdog_expiry_puts_the_setpoint_back_to_safe(runner: SimRunner) -> None:
    tpl = load_template("generic_bess")
    client = await connect(runner, "tcp1")
    try:
        await write_point(client, 2, tpl.points["watchdog_s"], 1)
        await write_point(client, 2, tpl.points["p_set_kw"], 30.0)
        assert runner.check_watchdogs() == []
        await asyncio.sleep(1.1)
        assert runner.check_watchdogs() == ["bess1"]
        got, _ = await read_point(client, 2, tpl.points["p_set_kw"])
    finally:
        client.close()
    assert got == 0.0


async def test_stop_leaves_nothing_listening() -> None:
    r = SimRunner(site_config(), port_overrides={"tcp1": 0, "rtu1": 0}, step_s=0.01)
    ports = await r.start()
    await asyncio.sleep(0.05)  # a few physics steps on the background task
    await r.stop()
    for conn_id, port in ports.items():
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0,
                                      reconnect_delay=0)
        assert not await client.connect(), conn_id
        client.close()
