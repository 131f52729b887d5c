"""Control channel of a running simulator, and the entry point of ``autogrid sim``.

The channel is a Unix socket speaking JSON lines: one request object per line, one
response object per line, in order. Requests: ``{"cmd": NAME, ...arguments, "id": any}``;
responses: ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "message"}``, with
the request's ``id`` echoed when given. Commands:

  ping                                          -> "pong"
  devices                                       -> [{id, nature, template, connection,
                                                     unit_id, served, port, skipped, faults}]
  ports                                         -> {connection id: port}
  values      device                            -> {point: value}
  faults                                        -> {device id: [{kind, ...params}]}
  set_fault   device, kind, params={}           -> {kind, ...params}
  clear_fault device, kind=null (all)           -> [kinds cleared]
  grid        available: bool                   -> {"available": bool}
  journal     device=null (all)                 -> [{at, device, unit, block, address,
                                                     values, points, peer, ok}]
                                                   (the write journal; error when off)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivers.can.connection import CanConnection
from gateway.config.models import SiteConfig
from sim_devices.runner import SimRunner

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


class ControlServer:
    """JSON-lines control socket for one SimRunner."""

    def __init__(self, runner: SimRunner, path: str | Path) -> None:
        self.runner = runner
        self.path = Path(path)
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self.path.exists() and self.path.is_socket():
            self.path.unlink()  # left over from a simulator that was killed
        self._server = await asyncio.start_unix_server(self._client, path=str(self.path),
                                                       limit=MAX_LINE)
        os.chmod(self.path, 0o660)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._clients):
            task.cancel()
        for task in list(self._clients):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if server is not None:
            await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            while line := await reader.readline():
                response = await self.handle_line(line)
                writer.write(json.dumps(response).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError):  # peer gone, or a line over MAX_LINE
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def handle_line(self, line: bytes) -> dict[str, Any]:
        """One request line -> one response object (never raises)."""
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                raise ValueError('a request is an object with "cmd"')
        except ValueError as exc:
            return {"ok": False, "error": f"bad request: {exc}"}
        out: dict[str, Any]
        try:
            out = {"ok": True, "result": _jsonable(await self.handle(req))}
        except (KeyError, ValueError, TypeError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            out = {"ok": False, "error": str(msg)}
        if "id" in req:
            out["id"] = req["id"]
        return out

    async def handle(self, req: dict[str, Any]) -> Any:
        r, cmd = self.runner, req["cmd"]
        if cmd == "ping":
            return "pong"
        if cmd == "devices":
            return r.devices()
        if cmd == "ports":
            return r.ports
        if cmd == "values":
            return r.values(_arg(req, "device", str))
        if cmd == "faults":
            return r.faults()
        if cmd == "set_fault":
            params = req.get("params") or {}
            if not isinstance(params, dict):
                raise ValueError('"params" must be an object')
            fault = await r.set_fault(_arg(req, "device", str), _arg(req, "kind", str), **params)
            return fault.as_dict()
        if cmd == "clear_fault":
            kind = req.get("kind")
            if kind is not None and not isinstance(kind, str):
                raise ValueError('"kind" must be a string or null')
            return await r.clear_fault(_arg(req, "device", str), kind)
        if cmd == "grid":
            available = _arg(req, "available", bool)
            r.set_grid(available)
            return {"available": available}
        if cmd == "journal":
            device = req.get("device")
            if device is not None and not isinstance(device, str):
                raise ValueError('"device" must be a string or null')
            if r.journal is None:
                raise ValueError("the write journal is off (simulation.write_journal)")
            return [row.as_dict() for row in r.journal.rows(device)]
        raise ValueError(f"unknown command '{cmd}' (known: ping, devices, ports, values, "
                         "faults, set_fault, clear_fault, grid, journal)")


def _arg(req: dict[str, Any], name: str, typ: type) -> Any:
    if name not in req:
        raise ValueError(f'"{req["cmd"]}" needs "{name}"')
    value = req[name]
    if not isinstance(value, typ):
        raise ValueError(f'"{name}" must be a {typ.__name__}, found {value!r}')
    return value


async def control_request(path: str | Path, cmd: str, **args: Any) -> Any:
    """Send one command to a simulator's control socket; its result, or RuntimeError."""
    reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_LINE)
    try:
        writer.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        await writer.drain()
        line = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    if not line:
        raise RuntimeError("the simulator closed the control connection")
    resp = json.loads(line)
    if not resp.get("ok"):
        raise RuntimeError(resp.get("error", "unknown error"))
    return resp.get("result")


async def serve_site(cfg: SiteConfig, *, control_socket: str | Path | None = None,
                     port_overrides: dict[str, int] | None = None, speed: float | None = None,
                     step_s: float = 0.1,
                     ready: Callable[[dict[str, int]], None] | None = None) -> None:
    """Serve the site's simulated devices until cancelled (``autogrid sim -c CONFIG``).

    ``ready`` is called once with connection id -> bound port when everything listens.
    Devices on ``modbus_serial`` connections are not served (logged).
    """
    runner = SimRunner(cfg, port_overrides=port_overrides, speed=speed, step_s=step_s)
    control = ControlServer(runner, control_socket) if control_socket is not None else None
    try:
        ports = await runner.start()
        if control is not None:
            await control.start()
        for conn_id, port in ports.items():
            conn = cfg.connection(conn_id)
            # a CAN bus has no port: it is reached at its channel (pty link, group, ...)
            where = (f"CAN {conn.interface} '{conn.channel}'" if isinstance(conn, CanConnection)
                     else f"127.0.0.1:{port}")
            log.info("simulated connection %s on %s", conn_id, where)
        for dev_id, why in runner.skipped.items():
            log.warning("simulated device %s is not served: %s", dev_id, why)
        if ready is not None:
            ready(ports)
        await asyncio.Event().wait()  # until cancelled
    finally:
        if control is not None:
            await control.stop()
        await runner.stop()
