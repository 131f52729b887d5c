"""The simulated devices' write journal (the device side as a witness) and the Modbus TCP
``source_address`` option that lets a device tell its clients apart: both client paths
(the lean link and ``client: pymodbus``) bind to it, the journal names that address as
the peer, the bound holds, the rows go to a file and over the control channel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.driver import ModbusDriver
from gateway.config.models import SiteConfig
from sim_devices.control import ControlServer, control_request
from sim_devices.journal import WriteJournal, load
from sim_devices.runner import SimRunner


def site_config(journal: dict[str, Any] | None = None, **conn: Any) -> SiteConfig:
    return SiteConfig.model_validate({
        "site": {"name": "j", "timezone": "UTC"},
        "gateways": [{"id": "gw-a"}, {"id": "gw-b"}],
        "connections": [{"id": "tcp", "type": "modbus_tcp", "host": "127.0.0.1",
                         "port": 1502, **conn}],
        "devices": [{"id": "bat", "nature": "bess", "template": "generic_bess",
                     "connection": "tcp", "unit_id": 2,
                     "ratings": {"capacity_kwh": 50, "p_max_kw": 25}}],
        "simulation": {"clock": {"start": "2025-06-21T09:00:00+00:00"},
                       **({"write_journal": journal} if journal is not None else {})},
    })


async def write_from(cfg: SiteConfig, gateway: str, port: int, value: float,
                     client: str = "lean") -> float:
    """Write the battery's setpoint as ``gateway`` would (its view of the connection)."""
    conn = cfg.connection("tcp").model_copy(update={"port": port, "client": client})
    drv = ModbusDriver()
    try:
        io = drv.attach(cfg.devices[0], cfg.template_library().load("generic_bess"),
                        conn.for_gateway(gateway))
        return float(await io.write("p_set_kw", value))
    finally:
        await drv.close()


@pytest.mark.parametrize("client", ["lean", "pymodbus"])
async def test_each_gateway_writes_from_its_source_address_and_the_device_says_so(
        client: str) -> None:
    cfg = site_config(source_address={"gw-a": "127.0.0.2", "gw-b": "127.0.0.3"})
    journal = WriteJournal(per_device=10)
    async with SimRunner(cfg, port_overrides={"tcp": 0}, journal=journal) as runner:
        port = runner.ports["tcp"]
        assert await write_from(cfg, "gw-a", port, 5.0, client) == pytest.approx(5.0)
        assert await write_from(cfg, "gw-b", port, -7.5, client) == pytest.approx(-7.5)
        assert await write_from(cfg, "gw-c", port, 1.0, client) == pytest.approx(1.0)
    rows = journal.rows("bat")
    assert [(r.peer[0] if r.peer else None, r.points.get("p_set_kw"), r.ok)
            for r in rows] == [("127.0.0.2", 5.0, True), ("127.0.0.3", -7.5, True),
                               ("127.0.0.1", 1.0, True)]  # gw-c is not named: the OS chose
    assert all(r.unit == 2 and r.block == "h" and r.peer and r.peer[1] > 0 for r in rows)
    assert rows[0].at <= rows[1].at <= rows[2].at


async def test_without_a_journal_nothing_is_recorded_and_the_server_is_plain() -> None:
    cfg = site_config()
    async with SimRunner(cfg, port_overrides={"tcp": 0}) as runner:
        assert runner.journal is None
        assert await write_from(cfg, "gw-a", runner.ports["tcp"], 3.0) == pytest.approx(3.0)
        ep = runner.endpoints["tcp"]
        assert ep.journal is None and type(ep._server).__name__ == "ModbusTcpServer"


async def test_journal_is_bounded_dumped_on_stop_and_served_on_the_control_channel(
        tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    cfg = site_config({"per_device": 3, "path": str(path)})
    runner = SimRunner(cfg, port_overrides={"tcp": 0})
    control = ControlServer(runner, tmp_path / "sim.sock")
    await runner.start()
    try:
        await control.start()
        for v in (1.0, 2.0, 3.0, 4.0, 5.0):
            await write_from(cfg, "gw-a", runner.ports["tcp"], v)
        got = await control_request(tmp_path / "sim.sock", "journal", device="bat")
        assert [r["points"]["p_set_kw"] for r in got] == [3.0, 4.0, 5.0]
        assert runner.journal is not None and runner.journal.dropped == 2
        assert got[0]["peer"][0] == "127.0.0.1"
    finally:
        await control.stop()
        await runner.stop()
    rows = load(path)
    assert [r.points["p_set_kw"] for r in rows] == [3.0, 4.0, 5.0]
    assert json.loads(path.read_text().splitlines()[0])["device"] == "bat"


async def test_control_channel_says_when_the_journal_is_off(tmp_path: Path) -> None:
    runner = SimRunner(site_config(), port_overrides={"tcp": 0})
    control = ControlServer(runner, tmp_path / "sim.sock")
    await control.start()
    try:
        with pytest.raises(RuntimeError, match="write journal is off"):
            await control_request(tmp_path / "sim.sock", "journal")
    finally:
        await control.stop()


SOURCES = """\
site: {name: s, timezone: UTC}
gateways: [{id: gw-a}, {id: gw-b}]
connections:
  - id: tcp
    type: modbus_tcp
    host: 127.0.0.1
    source_address: SOURCE
devices:
  - {id: bat, nature: bess, template: generic_bess, connection: tcp, unit_id: 2,
     gateway: gw-a}
"""


@pytest.mark.parametrize(("source", "where", "message"), [
    ("127.0.0.2", None, None),
    ("{gw-a: 127.0.0.2, gw-b: 127.0.0.3}", None, None),
    ("localhost", "site.yaml:7:21: connections[0].source_address",
     "expected an IPv4 or IPv6 address literal of this gateway (found 'localhost')"),
    ("'::1'", "site.yaml:7:21: connections[0].source_address",
     "::1 is IPv6 but host 127.0.0.1 is IPv4"),
    ("{gw-a: 127.0.0.2, gw-x: 127.0.0.3}", "site.yaml:7:45: connections[0].source_address.gw-x",
     "unknown gateway 'gw-x'; did you mean 'gw-b' or 'gw-a'? (gateways: gw-a, gw-b)"),
    ("{gw-b: 10.0.0.300}", "site.yaml:7:28: connections[0].source_address.gw-b",
     "expected an IPv4 or IPv6 address literal of this gateway (found '10.0.0.300')"),
])
def test_source_address_is_checked_at_its_position(tmp_path: Path, source: str,
                                                    where: str | None,
                                                    message: str | None) -> None:
    from gateway.config.loader import check_config

    f = tmp_path / "site.yaml"
    f.write_text(SOURCES.replace("SOURCE", source))
    found = [str(p).removeprefix(f"{tmp_path}/") for p in check_config(f)]
    assert found == ([] if where is None else [f"{where}: {message}"])
