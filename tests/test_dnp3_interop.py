"""Interoperability: our DNP3 master polls and commands an outstation built on the
reference opendnp3 engine (PyPI package yadnp3, imported as ``opendnp3``), software we
did not write."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from drivers.dnp3.connection import Dnp3Tcp
from drivers.dnp3.device import CommandRefused, Dnp3DeviceIO
from drivers.dnp3.driver import Dnp3Driver
from drivers.dnp3.template import Dnp3Template
from gateway.config.models import Device

o = pytest.importorskip("opendnp3", reason="yadnp3 (opendnp3 bindings) is not installed")

TEMPLATE = Dnp3Template.model_validate({
    "protocol": "dnp3", "nature": "bess",
    "points": {
        "soc_pct": {"group": 30, "index": 0, "scale": 0.1, "class": 2},
        "p_kw": {"group": 30, "index": 1, "scale": 0.1, "class": 2},
        "p_set_kw": {"group": 40, "index": 0,
                     "command": {"group": 41, "index": 0, "variation": 3, "mode": "direct"}},
        "watchdog_s": {"command": {"group": 41, "index": 5, "variation": 1, "mode": "sbo"}},
    },
})
BREAKER = Dnp3Template.model_validate({
    "protocol": "dnp3", "nature": "breaker",
    "points": {
        "closed": {"group": 1, "index": 0, "class": 1},
        "trip": {"command": {"group": 12, "index": 0, "code_true": "trip", "mode": "sbo"}},
        "close": {"command": {"group": 12, "index": 0, "code_true": "close"}},
    },
})


class Handler(o.ICommandHandler):  # type: ignore[name-defined]
    """Records every operate; refuses output index 5 (LOCAL), like a relay in local mode."""

    def __init__(self) -> None:
        super().__init__()
        self.operated: list[tuple[str, int, Any]] = []
        self.selected = 0

    def Begin(self) -> None:
        pass

    def End(self) -> None:
        pass

    def Select(self, cmd: Any, index: int) -> Any:
        self.selected += 1
        return o.CommandStatus.LOCAL if index == 5 else o.CommandStatus.SUCCESS

    def Operate(self, cmd: Any, index: int, handler: Any, op_type: Any) -> Any:
        if isinstance(cmd, o.ControlRelayOutputBlock):
            self.operated.append(("crob", index, (cmd.opType, cmd.tcc)))
        else:
            self.operated.append((type(cmd).__name__, index, cmd.value))
            if index != 5:  # the application reports the new output state
                handler.Update(o.AnalogOutputStatus(cmd.value), index)
        return o.CommandStatus.LOCAL if index == 5 else o.CommandStatus.SUCCESS


class App(o.IOutstationApplication):  # type: ignore[name-defined]
    pass


class Listener(o.IChannelListener):  # type: ignore[name-defined]
    def OnStateChange(self, state: Any) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:  # opendnp3 cannot report the port it bound to port 0
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def outstation() -> Iterator[tuple[int, Any, Handler]]:
    port = _free_port()
    manager = o.DNP3Manager(1)
    channel = manager.AddTCPServer("srv", o.levels.NOTHING, o.ServerAcceptMode.CloseExisting,
                                   o.IPEndpoint("127.0.0.1", port), Listener())
    cfg = o.OutstationStackConfig(o.DatabaseConfig(10))
    cfg.link.LocalAddr = 10
    cfg.link.RemoteAddr = 1
    handler, app = Handler(), App()
    station = channel.AddOutstation("bess", handler, app, cfg)
    station.Enable()
    b = o.UpdateBuilder()
    b.Update(o.Analog(625.0), 0)  # 62.5 %
    b.Update(o.Analog(-123.0), 1)  # -12.3 kW
    b.Update(o.Binary(True), 0)
    station.Apply(b.Build())
    try:
        yield port, station, handler
    finally:
        station.Shutdown()
        channel.Shutdown()
        manager.Shutdown()  # joins opendnp3's threads


def _attach(driver: Dnp3Driver, port: int, tpl: Dnp3Template, dev_id: str) -> Dnp3DeviceIO:
    conn = Dnp3Tcp(type="dnp3_tcp", id="ref", host="127.0.0.1", port=port,
                   outstation_address=10, master_address=1, timeout_s=2.0)
    dev = Device(id=dev_id, nature=tpl.nature, template="ref", connection="ref")
    return driver.attach(dev, tpl, conn)


async def test_poll_and_command_an_opendnp3_outstation(
        outstation: tuple[int, Any, Handler]) -> None:
    port, station, handler = outstation
    driver = Dnp3Driver()
    try:
        bess = _attach(driver, port, TEMPLATE, "bess")
        brk = _attach(driver, port, BREAKER, "brk")
        got = await bess.read()
        assert got["soc_pct"] == pytest.approx(62.5)
        assert got["p_kw"] == pytest.approx(-12.3)
        assert (await brk.read())["closed"] is True
        assert bess.link is brk.link  # one association, one lock

        # the command carries the float; opendnp3 reports analog output status as g40v1
        # (int32) by default, so the read-back is within one count of it
        assert await bess.write("p_set_kw", 12.5) == pytest.approx(12.5, abs=1.0)
        assert ("AnalogOutputFloat32", 0, pytest.approx(12.5)) in handler.operated

        await brk.write("trip", True)  # select before operate
        assert handler.selected >= 1
        assert ("crob", 0, (o.OperationType.PULSE_ON, o.TripCloseCode.TRIP)) \
            in handler.operated
        await brk.write("close", True)
        assert ("crob", 0, (o.OperationType.PULSE_ON, o.TripCloseCode.CLOSE)) \
            in handler.operated

        with pytest.raises(CommandRefused, match="LOCAL") as err:
            await bess.write("watchdog_s", 30)
        assert err.value.status.index == 5 and err.value.status.status == 7
        assert not any(op[1] == 5 for op in handler.operated)  # refused at SELECT

        b = o.UpdateBuilder()
        b.Update(o.Analog(700.0), 0)
        station.Apply(b.Build())
        bess.link.after_command()  # integrity poll on the next read
        assert (await bess.read())["soc_pct"] == pytest.approx(70.0)
    finally:
        await driver.close()
