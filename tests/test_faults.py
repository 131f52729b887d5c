"""Fault injection: each kind seen by a plain pymodbus client, then cleared again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.framer import FramerType

from drivers.codec import encode
from drivers.template import load_template
from gateway.config.models import SiteConfig
from sim_devices.faults import FaultKind, make_fault
from sim_devices.runner import SimRunner

BESS_UNIT, LOAD_UNIT, METER_UNIT = 2, 6, 3
SOC = load_template("generic_bess").points["soc_pct"]
E_CHARGED = load_template("generic_bess").points["e_charged_kwh"]


def site_config() -> SiteConfig:
    return SiteConfig.model_validate({
        "site": {"name": "faults"},
        "gateways": [{"id": "gw1"}],
        "connections": [
            {"id": "tcp1", "type": "modbus_tcp", "host": "127.0.0.1"},
            {"id": "rtu1", "type": "modbus_rtu_over_tcp", "host": "127.0.0.1"},
        ],
        "devices": [
            {"id": "bess1", "nature": "bess", "template": "generic_bess", "connection": "tcp1",
             "unit_id": BESS_UNIT, "ratings": {"capacity_kwh": 200, "p_max_kw": 100}},
            {"id": "load1", "nature": "load", "template": "generic_load", "connection": "tcp1",
             "unit_id": LOAD_UNIT, "ratings": {"p_max_kw": 30}},
            {"id": "meter1", "nature": "meter", "template": "meter_3ph", "connection": "rtu1",
             "unit_id": METER_UNIT},
        ],
    })


@pytest.fixture
async def runner() -> AsyncIterator[SimRunner]:
    r = SimRunner(site_config(), port_overrides={"tcp1": 0, "rtu1": 0}, step_s=3600)
    await r.start()
    r.step(60.0)
    try:
        yield r
    finally:
        await r.stop()


async def client_for(runner: SimRunner, conn_id: str = "tcp1", wait_s: float = 0.3,
                     connect: bool = True) -> AsyncModbusTcpClient:
    client = AsyncModbusTcpClient(
        "127.0.0.1", port=runner.ports[conn_id], timeout=wait_s, retries=0, reconnect_delay=0,
        framer=FramerType.RTU if conn_id == "rtu1" else FramerType.SOCKET)
    if connect:
        assert await client.connect()
    return client


async def read_soc(client: AsyncModbusTcpClient, unit: int = BESS_UNIT) -> Any:
    return await client.read_holding_registers(SOC.address, count=1, device_id=unit)


async def read_load(client: AsyncModbusTcpClient) -> Any:
    return await client.read_holding_registers(0, count=2, device_id=LOAD_UNIT)


async def test_exception_fault_answers_with_the_code_for_that_unit_only(runner: SimRunner
                                                                        ) -> None:
    client = await client_for(runner)
    try:
        await runner.set_fault("bess1", "exception", code=6)
        busy = await read_soc(client)
        other = await read_load(client)
        assert runner.faults() == {"bess1": [{"kind": "exception", "code": 6}]}
        assert await runner.clear_fault("bess1", "exception") == ["exception"]
        ok = await read_soc(client)
    finally:
        client.close()
    assert busy.isError() and busy.exception_code == 6
    assert not other.isError()
    assert not ok.isError() and ok.registers[0] > 0
    assert runner.faults() == {}


async def test_timeout_fault_never_answers(runner: SimRunner) -> None:
    client = await client_for(runner)
    try:
        await runner.set_fault("bess1", FaultKind.TIMEOUT)
        with pytest.raises(ModbusIOException):
            await read_soc(client)
        other = await read_load(client)
        await runner.clear_fault("bess1")
        ok = await read_soc(client)
    finally:
        client.close()
    assert not other.isError()
    assert not ok.isError()


async def test_slow_fault_delays_the_answer(runner: SimRunner) -> None:
    await runner.set_fault("bess1", "slow", delay_ms=1500)
    impatient = await client_for(runner, wait_s=0.2)
    patient = await client_for(runner, wait_s=5)
    try:
        with pytest.raises(ModbusIOException):
            await read_soc(impatient)
        await runner.set_fault("bess1", "slow", delay_ms=50)
        late = await read_soc(patient)
        await runner.clear_fault("bess1", "slow")
    finally:
        impatient.close()
        patient.close()
    assert not late.isError() and late.registers[0] > 0


async def test_stuck_fault_freezes_the_registers(runner: SimRunner) -> None:
    client = await client_for(runner)
    try:
        p_set = load_template("generic_bess").points["p_set_kw"]
        rr = await client.write_registers(p_set.address, encode(p_set, -80.0),
                                          device_id=BESS_UNIT)
        assert not rr.isError()
        await runner.set_fault("bess1", "stuck")
        before = await client.read_holding_registers(E_CHARGED.address, count=2,
                                                     device_id=BESS_UNIT)
        runner.step(1800.0)
        during = await client.read_holding_registers(E_CHARGED.address, count=2,
                                                     device_id=BESS_UNIT)
        await runner.clear_fault("bess1", "stuck")
        after = await client.read_holding_registers(E_CHARGED.address, count=2,
                                                    device_id=BESS_UNIT)
    finally:
        client.close()
    assert during.registers == before.registers
    assert after.registers != before.registers
    assert runner.values("bess1")["e_charged_kwh"] > 30.0  # the physics did not stop


async def test_garbage_fault_corrupts_tcp_and_rtu_responses(runner: SimRunner) -> None:
    tcp = await client_for(runner)
    rtu = await client_for(runner, "rtu1")
    try:
        await runner.set_fault("bess1", "garbage", seed=3)
        await runner.set_fault("meter1", "garbage")
        with pytest.raises(ModbusIOException):  # the frame makes no sense to the client
            await read_soc(tcp)
        with pytest.raises(ModbusIOException):  # bad CRC: the frame is discarded
            await rtu.read_input_registers(0, count=2, device_id=METER_UNIT)
        await runner.clear_fault("bess1")
        await runner.clear_fault("meter1")
    finally:
        tcp.close()
        rtu.close()
    tcp = await client_for(runner)
    try:
        assert not (await read_soc(tcp)).isError()
    finally:
        tcp.close()
    rtu = await client_for(runner, "rtu1")
    try:
        assert not (await rtu.read_input_registers(0, count=2, device_id=METER_UNIT)).isError()
    finally:
        rtu.close()


async def test_drop_fault_closes_connections_of_the_whole_endpoint(runner: SimRunner) -> None:
    client = await client_for(runner)
    try:
        assert not (await read_load(client)).isError()
        await runner.set_fault("bess1", "drop")
        await asyncio.sleep(0.05)
        assert runner.endpoints["tcp1"].connections() == 0
        for _ in range(2):  # reconnecting does not help while the fault is active
            assert await client.connect()
            with pytest.raises((ModbusIOException, ConnectionException)):
                await read_load(client)  # load1 shares the endpoint of bess1
        await runner.clear_fault("bess1", "drop")
        assert await client.connect()
        ok = await read_load(client)
    finally:
        client.close()
    assert not ok.isError()


async def test_refuse_fault_stops_listening_until_cleared(runner: SimRunner) -> None:
    port = runner.ports["tcp1"]
    client = await client_for(runner)
    await runner.set_fault("load1", "refuse")
    try:
        with pytest.raises((ModbusIOException, ConnectionException)):
            await read_load(client)
        fresh = await client_for(runner, connect=False)
        assert not await fresh.connect()
        fresh.close()
        rtu = await client_for(runner, "rtu1")  # other endpoints are untouched
        assert not (await rtu.read_input_registers(0, count=2, device_id=METER_UNIT)).isError()
        rtu.close()
        await runner.clear_fault("load1", "refuse")
        assert runner.ports["tcp1"] == port
        assert await client.connect()
        ok = await read_load(client)
    finally:
        client.close()
    assert not ok.isError()


async def test_fault_requests_are_checked(runner: SimRunner) -> None:
    with pytest.raises(ValueError, match="unknown fault kind 'melt'"):
        await runner.set_fault("bess1", "melt")
    with pytest.raises(ValueError, match="takes no parameter colour"):
        await runner.set_fault("bess1", "slow", colour="red")
    with pytest.raises(ValueError, match="code 99 is not a Modbus exception code"):
        await runner.set_fault("bess1", "exception", code=99)
    with pytest.raises(KeyError, match="device 'nope' is not served"):
        await runner.set_fault("nope", "drop")
    assert runner.faults() == {}


def test_make_fault_fills_defaults() -> None:
    assert make_fault("exception").params == {"code": 4}
    assert make_fault("slow", delay_ms="20").params == {"delay_ms": 20.0}
    assert make_fault("drop").as_dict() == {"kind": "drop"}
