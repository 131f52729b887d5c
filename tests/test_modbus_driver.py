"""Modbus driver reads against real pymodbus servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pymodbus.framer import FramerType
from test_modbus_driver_support import (
    config_device,
    device_from,
    registers_for,
    serving,
)

from drivers.base import DeviceOffline, UnknownPoint
from drivers.modbus.driver import ModbusDriver
from drivers.template import ModbusTemplate
from gateway.config.models import ModbusTcp
from gateway.model import Invalid

# One point of every type and word order, on holding, input, coil and discrete tables,
# with a SunSpec scale factor and a not-implemented marker.
INVERTER = ModbusTemplate(
    nature="pv_inverter",
    constants={40069: 0, 40070: 0xFFFF},  # registers the device has but we do not poll
    points={
        "p_kw": {"address": 40060, "type": "int32", "scale": 0.001},
        "q_kvar": {"address": 40062, "type": "int16", "scale": 0.01},
        "v_v": {"address": 40063, "type": "uint16", "scale_factor": 40064},
        "f_hz": {"address": 40065, "type": "uint32", "word_order": "little", "scale": 0.001},
        "e_total_kwh": {"address": 40067, "type": "float32"},
        "temp_c": {"address": 40071, "type": "int16", "not_implemented": 0x8000,
                   "optional": True},
        "dc_p_kw": {"address": 10, "function": "input", "type": "float32",
                    "word_order": "little"},
        "p_rated_kw": {"address": 12, "function": "input", "type": "uint16"},
        "state": {"address": 13, "function": "input", "type": "uint16",
                  "enum": {1: "off", 4: "mppt", 7: "fault"}},
        "p_limit_enabled": {"address": 3, "function": "coil", "type": "bool", "access": "rw"},
    },
)
VALUES: dict[str, Any] = {
    "p_kw": -12.345, "q_kvar": -1.5, "v_v": 230.4, "f_hz": 50.012, "e_total_kwh": 98765.5,
    "temp_c": None, "dc_p_kw": 12.75, "p_rated_kw": 15.0, "state": "mppt",
    "p_limit_enabled": True,
}
SF = {40064: -1}


def inverter_tables() -> Any:
    tables = registers_for(INVERTER, {k: v for k, v in VALUES.items() if v is not None}, SF)
    tables["holding"][40071] = 0x8000  # temp_c: not implemented
    return tables


async def test_reads_every_point_of_a_template() -> None:
    async with serving(device_from(1, inverter_tables())) as srv:
        drv = ModbusDriver()
        io = drv.attach(config_device(nature="pv_inverter"), INVERTER, srv.tcp())
        try:
            got = await io.read()
        finally:
            await drv.close()
    assert set(got) == set(VALUES)
    for name, want in VALUES.items():
        if isinstance(want, float):
            assert got[name] == pytest.approx(want, rel=1e-6), name
        else:
            assert got[name] == want, name
    assert io.stats.requests == 3  # holding 40060..40071 (constants bridge), input, coil
    assert io.stats.errors == 0


async def test_plan_uses_few_requests_and_only_declared_addresses() -> None:
    drv = ModbusDriver()
    link = ModbusTcp(id="link", type="modbus_tcp", host="127.0.0.1", port=1502)  # no I/O here
    io = drv.attach(config_device(nature="pv_inverter"), INVERTER, link)
    plan = [(str(b.function), b.address, b.count) for b in io.blocks]
    assert plan == [("holding", 40060, 12), ("input", 10, 4), ("coil", 3, 1)]
    # without the constants, 40069..40070 are undeclared: not read unless bridging is allowed
    bare = INVERTER.model_copy(update={"constants": {}})
    io2 = drv.attach(config_device("dev2", nature="pv_inverter"), bare, link)
    assert [(b.address, b.count) for b in io2.blocks][:2] == [(40060, 9), (40071, 1)]
    io3 = drv.attach(config_device("dev3", nature="pv_inverter"), bare, link, max_gap=2)
    assert [(b.address, b.count) for b in io3.blocks][:1] == [(40060, 12)]
    await drv.close()


async def test_points_subset_is_all_that_is_read() -> None:
    async with serving(device_from(1, inverter_tables())) as srv:
        drv = ModbusDriver()
        io = drv.attach(config_device(nature="pv_inverter", points=["v_v", "state"]),
                        INVERTER, srv.tcp())
        try:
            got = await io.read()
        finally:
            await drv.close()
    assert got == {"v_v": pytest.approx(230.4), "state": "mppt"}
    assert io.stats.requests == 2
    with pytest.raises(UnknownPoint, match="soc_pct"):
        drv.attach(config_device(nature="pv_inverter", points=["soc_pct"]), INVERTER,
                   srv.tcp())


async def test_not_implemented_scale_factor_is_invalid_on_a_mandatory_point() -> None:
    tables = inverter_tables()
    tables["holding"][40064] = 0x8000
    optional = INVERTER.model_copy(update={"points": {
        **INVERTER.points, "v_v": INVERTER.points["v_v"].model_copy(update={"optional": True})}})
    async with serving(device_from(1, tables)) as srv:
        drv = ModbusDriver()
        io = drv.attach(config_device("mandatory", nature="pv_inverter"), INVERTER, srv.tcp())
        io_opt = drv.attach(config_device("optional", nature="pv_inverter"), optional,
                            srv.tcp())
        try:
            got, got_opt = await io.read(), await io_opt.read()
        finally:
            await drv.close()
    assert got["v_v"] == Invalid(2304, "scale factor register 40064 reads 0x8000 "
                                       "(not implemented)")
    assert got_opt["v_v"] is None  # an optional point the device lacks: no value
    assert got["p_kw"] == got_opt["p_kw"] == pytest.approx(-12.345)


METER = ModbusTemplate(nature="meter", points={
    "p_kw": {"address": 0, "type": "int32", "scale": 0.001},
    "f_hz": {"address": 2, "type": "uint16", "scale": 0.01},
})


async def test_two_unit_ids_share_one_connection() -> None:
    a = registers_for(METER, {"p_kw": 1.5, "f_hz": 50.0})
    b = registers_for(METER, {"p_kw": -7.25, "f_hz": 49.9})
    async with serving(device_from(1, a), device_from(2, b)) as srv:
        drv = ModbusDriver()
        io1 = drv.attach(config_device("m1", unit=1), METER, srv.tcp("c1"))
        io2 = drv.attach(config_device("m2", unit=2), METER, srv.tcp("c2"))
        try:
            assert io1.endpoint == io2.endpoint == f"tcp://127.0.0.1:{srv.port}"
            for _ in range(5):  # concurrent reads queue on the endpoint's lock
                r1, r2 = await asyncio.gather(io1.read(), io2.read())
            assert srv.connects == 1
            ep = drv.endpoint(io1.endpoint)
            assert ep is not None and ep.refs == 2 and ep.connected
            await io1.close()  # one device leaves: the link stays for the other
            assert ep.connected and ep.refs == 1
            assert (await io2.read())["p_kw"] == pytest.approx(-7.25)
            await io2.close()  # the last one leaves: the link closes
            assert not ep.connected
            assert drv.endpoint(io1.endpoint) is None
            with pytest.raises(DeviceOffline, match="m2: detached"):
                await io2.read()
            assert srv.connects == 1
        finally:
            await drv.close()
    assert r1 == {"p_kw": pytest.approx(1.5), "f_hz": pytest.approx(50.0)}
    assert r2 == {"p_kw": pytest.approx(-7.25), "f_hz": pytest.approx(49.9)}


async def test_rtu_over_tcp_and_serial_rtu() -> None:
    tables = registers_for(METER, {"p_kw": 3.125, "f_hz": 50.05})
    async with serving(device_from(5, tables), framer=FramerType.RTU) as srv:
        drv = ModbusDriver()
        rtu = drv.attach(config_device("rtu", unit=5), METER, srv.rtu_over_tcp())
        # the serial client, through pyserial's socket:// URL to the same RTU server
        ser = drv.attach(config_device("ser", unit=5), METER, srv.serial_url())
        try:
            assert rtu.endpoint.startswith("rtu+tcp://")
            assert ser.endpoint.startswith("serial://socket://")
            assert await rtu.read() == {"p_kw": pytest.approx(3.125), "f_hz": pytest.approx(50.05)}
            assert await ser.read() == {"p_kw": pytest.approx(3.125), "f_hz": pytest.approx(50.05)}
        finally:
            await drv.close()


async def test_illegal_address_on_bridged_read_splits_and_is_remembered() -> None:
    tpl = ModbusTemplate(nature="meter", points={
        "p_kw": {"address": 0, "type": "int16"},
        "v_v": {"address": 1, "type": "uint16"},
        "f_hz": {"address": 4, "type": "uint16", "scale": 0.01},
    })
    # registers 2 and 3 do not exist on the device: a bridged read of 0..4 is refused
    tables = registers_for(tpl, {"p_kw": -3, "v_v": 231, "f_hz": 50.0})
    async with serving(device_from(1, tables)) as srv:
        drv = ModbusDriver(max_gap=8)
        io = drv.attach(config_device(), tpl, srv.tcp())
        try:
            assert [(b.address, b.count) for b in io.blocks] == [(0, 5)]
            assert await io.read() == {"p_kw": -3.0, "v_v": 231.0, "f_hz": 50.0}
            assert [(b.address, b.count) for b in io.blocks] == [(0, 2), (4, 1)]
            first = io.stats.requests
            assert first == 3  # the refused read, then the two declared runs
            assert await io.read() == {"p_kw": -3.0, "v_v": 231.0, "f_hz": 50.0}
            assert io.stats.requests - first == 2
            assert io.stats.extra["plan_splits"] == 1
            assert io.stats.errors == 0
        finally:
            await drv.close()
