"""serve_site (what `autogrid sim` runs) and its JSON-lines control socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from gateway.config.models import SiteConfig
from sim_devices.control import control_request, serve_site


def site_config() -> SiteConfig:
    return SiteConfig.model_validate({
        "site": {"name": "control"},
        "gateways": [{"id": "gw1"}],
        "connections": [{"id": "tcp1", "type": "modbus_tcp", "host": "127.0.0.1"},
                        {"id": "ser1", "type": "modbus_serial", "port": "/dev/ttyUSB7"}],
        "devices": [
            {"id": "bess1", "nature": "bess", "template": "generic_bess", "connection": "tcp1",
             "unit_id": 2, "ratings": {"capacity_kwh": 100, "p_max_kw": 50}},
            {"id": "meter1", "nature": "meter", "template": "meter_3ph", "connection": "tcp1",
             "unit_id": 3},
            {"id": "load9", "nature": "load", "template": "generic_load", "connection": "ser1"},
        ],
    })


async def test_serve_site_with_control_socket(tmp_path: Path) -> None:
    sock = tmp_path / "sim.sock"
    ports: dict[str, int] = {}
    started = asyncio.Event()

    def ready(p: dict[str, int]) -> None:
        ports.update(p)
        started.set()

    task = asyncio.create_task(serve_site(site_config(), control_socket=sock,
                                          port_overrides={"tcp1": 0}, step_s=0.05, ready=ready))
    try:
        await asyncio.wait_for(started.wait(), 10)
        assert await control_request(sock, "ping") == "pong"
        assert await control_request(sock, "ports") == ports
        devices = {d["id"]: d for d in await control_request(sock, "devices")}
        assert devices["bess1"]["served"] and devices["bess1"]["port"] == ports["tcp1"]
        assert not devices["load9"]["served"]
        values = await control_request(sock, "values", device="bess1")
        assert values["capacity_kwh"] == 100.0

        fault = await control_request(sock, "set_fault", device="bess1", kind="exception",
                                      params={"code": 6})
        assert fault == {"kind": "exception", "code": 6}
        client = AsyncModbusTcpClient("127.0.0.1", port=ports["tcp1"], timeout=1, retries=0,
                                      reconnect_delay=0)
        assert await client.connect()
        try:
            busy = await client.read_holding_registers(0, count=1, device_id=2)
            assert await control_request(sock, "faults") == {"bess1": [fault]}
            assert await control_request(sock, "clear_fault", device="bess1") == ["exception"]
            ok = await client.read_holding_registers(0, count=1, device_id=2)
        finally:
            client.close()
        assert busy.isError() and busy.exception_code == 6
        assert not ok.isError()

        assert await control_request(sock, "grid", available=False) == {"available": False}
        await asyncio.sleep(0.2)  # a few physics steps on the background task
        assert (await control_request(sock, "values", device="meter1"))["v_v"] == 0.0
        await control_request(sock, "grid", available=True)

        with pytest.raises(RuntimeError, match="unknown command 'explode'"):
            await control_request(sock, "explode")
        with pytest.raises(RuntimeError, match="device 'nope' is not served"):
            await control_request(sock, "values", device="nope")
        with pytest.raises(RuntimeError, match='"set_fault" needs "kind"'):
            await control_request(sock, "set_fault", device="bess1")

        # Several requests on one connection, answered in order, ids echoed.
        reader, writer = await asyncio.open_unix_connection(str(sock))
        writer.write(b'{"cmd": "ping", "id": 1}\nnot json\n{"cmd": "faults", "id": "b"}\n')
        await writer.drain()
        answers = [json.loads(await reader.readline()) for _ in range(3)]
        writer.close()
        await writer.wait_closed()
        assert answers[0] == {"ok": True, "result": "pong", "id": 1}
        assert answers[1]["ok"] is False and "bad request" in answers[1]["error"]
        assert answers[2] == {"ok": True, "result": {}, "id": "b"}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not sock.exists()
    client = AsyncModbusTcpClient("127.0.0.1", port=ports["tcp1"], timeout=1, retries=0,
                                  reconnect_delay=0)
    assert not await client.connect()
    client.close()
