"""The Modbus connections of a site config: TCP, RTU framing over TCP, serial RTU."""

from __future__ import annotations

import ipaddress
from typing import Annotated, ClassVar, Literal, Self

from pydantic import Field

from drivers.connection import HOST, ConnectionBase, PositiveS, host_problems, network_endpoint
from gateway.yamlsrc import PathKey, Problem, Source


class _Conn(ConnectionBase):
    timeout_s: PositiveS = 1.0
    retries: Annotated[int, Field(ge=0, le=5)] = 0
    reconnect_delay_s: PositiveS = 0.5  # first delay after a lost link; doubles each try
    reconnect_delay_max_s: PositiveS = 30.0


class _Network(_Conn):
    host: str
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    # the local address the client socket is bound to before it connects (a gateway with
    # several interfaces or addresses on the device's network): one IP literal for every
    # gateway, or gateway id -> IP literal (a gateway not named lets the OS choose)
    source_address: str | dict[str, str] | None = None

    def endpoint(self) -> tuple[tuple[str, ...], str] | None:
        return network_endpoint(self.host, self.port)

    def for_gateway(self, gateway_id: str) -> Self:
        if not isinstance(self.source_address, dict):
            return self
        return self.model_copy(update={"source_address":
                                       self.source_address.get(gateway_id)})

    def bind_address(self) -> str | None:
        """The source address to bind to; None: the OS chooses (also for a per-gateway
        mapping not resolved with ``for_gateway``)."""
        return self.source_address if isinstance(self.source_address, str) else None

    def gateway_refs(self) -> dict[tuple[str, ...], list[str]]:
        if isinstance(self.source_address, dict):
            return {("source_address",): list(self.source_address)}
        return {}

    def check(self, index: int, src: Source) -> list[Problem]:
        return super().check(index, src) + host_problems(
            self.host, index, src, serial_hint="use type 'modbus_serial' with 'port: {host}'"
        ) + self._source_problems(index, src)

    def _source_problems(self, index: int, src: Source) -> list[Problem]:
        given = self.source_address
        if given is None:
            return []
        items: list[tuple[str | None, str]] = (list(given.items()) if isinstance(given, dict)
                                               else [(None, given)])
        try:
            target = ipaddress.ip_address(self.host)
        except ValueError:
            target = None  # a host name: its family is known only when resolved
        out = []
        for gw, addr in items:
            here: PathKey = ("connections", index, "source_address",
                             *([gw] if gw is not None else []))
            try:
                ip = ipaddress.ip_address(addr)
            except ValueError:
                out.append(src.problem(here, f"expected an IPv4 or IPv6 address literal of "
                                             f"this gateway (found '{addr}')"))
                continue
            if target is not None and ip.version != target.version:
                out.append(src.problem(here, f"{addr} is IPv{ip.version} but host "
                                             f"{self.host} is IPv{target.version}"))
        return out


class ModbusTcp(_Network):
    type: Literal["modbus_tcp"]
    # requests in flight at once on the connection, told apart by their transaction ids;
    # 1 = one at a time (some devices and TCP-to-serial gateways handle no more)
    max_in_flight: Annotated[int, Field(ge=1, le=32)] = 1
    # "lean": our own Modbus TCP framing (drivers/modbus/pipeline.py), the default;
    # "pymodbus": the pymodbus client, one request at a time (an escape hatch for a device
    # the lean link does not suit; max_in_flight must stay 1 with it)
    client: Literal["lean", "pymodbus"] = "lean"

    def check(self, index: int, src: Source) -> list[Problem]:
        out = super().check(index, src)
        if self.client == "pymodbus" and self.max_in_flight > 1:
            out.append(src.problem(("connections", index, "max_in_flight"),
                                   f"max_in_flight {self.max_in_flight} needs the lean "
                                   f"client; the pymodbus client sends one request at a "
                                   f"time (remove 'client: pymodbus' or set max_in_flight: 1)"))
        return out


class ModbusRtuOverTcp(_Network):
    type: Literal["modbus_rtu_over_tcp"]
    unit_zero_is_broadcast: ClassVar[bool] = True


class ModbusSerial(_Conn):
    type: Literal["modbus_serial"]
    port: str  # /dev/ttyUSB0, /dev/serial/by-id/...
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit_zero_is_broadcast: ClassVar[bool] = True
    one_box: ClassVar[bool] = True

    def endpoint(self) -> tuple[tuple[str, ...], str] | None:
        return ("serial", self.port), f"serial port '{self.port}'"

    def check(self, index: int, src: Source) -> list[Problem]:
        out = super().check(index, src)
        port = self.port
        if HOST.match(port) and "." in port and not port.startswith("/"):
            out.append(src.problem(("connections", index, "port"),
                                   f"'{port}' looks like a network host, not a serial "
                                   f"device; for Modbus over the network use type "
                                   f"'modbus_tcp' or 'modbus_rtu_over_tcp' with 'host'"))
        return out


ModbusConnection = ModbusTcp | ModbusRtuOverTcp | ModbusSerial
CONNECTION_MODELS = (ModbusTcp, ModbusRtuOverTcp, ModbusSerial)
