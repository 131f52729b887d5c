"""Local API: JSON lines over a Unix socket.

Request  ``{"id": 1, "cmd": "snapshot"}``
Reply    ``{"id": 1, "ok": true, "result": {...}}`` or ``{"id": 1, "ok": false, "error": "..."}``
Commands: ping, summary, snapshot, devices, device {device}, stats, commands,
          subscribe {devices?: [ids], interval_s?: 0.5}, unsubscribe, and whatever other
          components register with ``ApiServer.register`` (control, analytics, ...).
Every connection is identified by the peer's Unix credentials (SO_PEERCRED); each command
needs a role (viewer < operator < engineer) and is refused with the reason otherwise.
A subscription streams ``{"event": "update", "ts": ..., "changes": {dev: {point: reading}},
"health": {dev: quality}}`` at most every ``interval_s``, coalescing changes in between,
so a slow client costs memory bounded by the number of points, never a growing queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import pwd
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.aio import cancel_and_wait
from gateway.model import DeviceHealth, Reading
from gateway.state import SiteState

log = logging.getLogger("autogrid.api")

MAX_LINE = 64 * 1024
PROTOCOL_VERSION = 1


class ApiError(Exception):
    """A request that cannot be served; the message goes back to the client."""


ROLES = ("viewer", "operator", "engineer")


@dataclass(frozen=True)
class Caller:
    """Who is on the other end of the socket (from the kernel, not from the client)."""

    uid: int
    gid: int
    pid: int
    user: str
    role: str = "viewer"

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


Handler = Callable[[dict[str, Any], Caller], Any]  # may return an awaitable


@dataclass(frozen=True)
class Command:
    name: str
    handler: Handler
    role: str
    help: str


def default_role(uid: int, gid: int) -> str:
    """Until roles are configured: root and the daemon's own user may do anything, others view."""
    return "engineer" if uid in (0, os.getuid()) else "viewer"


def peer_caller(writer: asyncio.StreamWriter,
                role_of: Callable[[int, int], str] = default_role) -> Caller:
    sock = writer.get_extra_info("socket")
    pid, uid, gid = -1, -1, -1
    if sock is not None and hasattr(socket, "SO_PEERCRED"):
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
    try:
        user = pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        user = f"uid {uid}"
    return Caller(uid, gid, pid, user, role_of(uid, gid))


class _Subscription:
    def __init__(self, writer: asyncio.StreamWriter, devices: set[str] | None,
                 interval_s: float) -> None:
        self.writer = writer
        self.devices = devices
        self.interval_s = interval_s
        self.pending: dict[str, dict[str, dict[str, object]]] = {}
        self.health: dict[str, str] = {}
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def add(self, device_id: str, changed: dict[str, Reading]) -> None:
        if self.devices is not None and device_id not in self.devices:
            return
        dev = self.pending.setdefault(device_id, {})
        for point, r in changed.items():
            dev[point] = r.as_dict()
        self.wake.set()

    def add_health(self, device_id: str, health: DeviceHealth) -> None:
        if self.devices is not None and device_id not in self.devices:
            return
        self.health[device_id] = str(health.quality)
        self.wake.set()

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            changes, self.pending = self.pending, {}
            health, self.health = self.health, {}
            msg = {"event": "update", "ts": time.time(), "changes": changes, "health": health}
            self.writer.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
            await self.writer.drain()
            await asyncio.sleep(self.interval_s)


class ApiServer:
    def __init__(self, state: SiteState, socket_path: Path, gateway_id: str,
                 extra_stats: Callable[[], dict[str, Any]] | None = None) -> None:
        self.state = state
        self.path = socket_path
        self.gateway_id = gateway_id
        self.extra_stats = extra_stats
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._inode: tuple[int, int] | None = None  # of the socket file we bound
        self.started = time.time()
        self.role_of: Callable[[int, int], str] = default_role
        # Set by the console policy when tokens are configured: a request carrying
        # "token" runs as the token's name and role (an unknown token raises ApiError).
        self.token_caller: Callable[[str, Caller], Caller] | None = None
        self.commands: dict[str, Command] = {}
        for name, fn, help_ in (
                ("ping", self._ping, "daemon identity and uptime"),
                ("summary", lambda r, c: self.state.summary(), "site power flow"),
                ("snapshot", self._snapshot, "every device with every point"),
                ("devices", self._devices, "device list with health"),
                ("device", self._device, "one device: {device}"),
                ("stats", lambda r, c: self.extra_stats() if self.extra_stats else {},
                 "communication and historian statistics"),
                ("commands", self._commands, "the commands you may use")):
            self.register(name, fn, role="viewer", help=help_)

    def register(self, name: str, handler: Handler, *, role: str = "viewer",
                 help: str = "", replace: bool = False) -> None:
        """Add an API command. ``handler(request, caller)`` returns the result (or an
        awaitable of it) and raises ApiError to refuse with a reason. ``replace`` lets the
        component that owns the data take over a command another one offers as a fallback."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        if (name in self.commands and not replace) or name in ("subscribe", "unsubscribe"):
            raise ValueError(f"API command {name!r} is already registered")
        self.commands[name] = Command(name, handler, role, help)

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if await _socket_alive(self.path):  # never unlink a socket someone serves
                raise RuntimeError(f"{self.path}: another daemon is already listening here")
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._client, path=str(self.path),
                                                       limit=MAX_LINE)
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        os.chmod(self.path, 0o660)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await cancel_and_wait(list(self._clients))
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self._unlink_own_socket()

    def _unlink_own_socket(self) -> None:
        """Remove the socket file only if it is still the one we bound (same inode): a
        daemon that failed to start, or was replaced, must not cut off another one."""
        if self._inode is None:
            return
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                self.path.unlink()
        self._inode = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        sub: _Subscription | None = None
        unsubscribe: list[Callable[[], None]] = []
        caller = peer_caller(writer, self.role_of)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await _send(writer, {"ok": False, "error": f"request longer than {MAX_LINE} "
                                                                "bytes; closing"})
                    return
                if not line:
                    return
                req_id: Any = None
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict):
                        raise ApiError("a request is a JSON object like {\"cmd\": \"ping\"}")
                    req_id = req.get("id")
                    cmd = req.get("cmd")
                    if cmd == "subscribe":
                        if sub is not None:
                            raise ApiError("already subscribed on this connection")
                        sub = self._subscribe(req, writer)
                        unsubscribe = [self.state.on_change(sub.add),
                                       self.state.on_health(sub.add_health)]
                        result: Any = {"subscribed": sorted(sub.devices or self.state.devices),
                                       "interval_s": sub.interval_s}
                    elif cmd == "unsubscribe":
                        for u in unsubscribe:
                            u()
                        unsubscribe = []
                        if sub and sub.task:
                            sub.task.cancel()
                        sub = None
                        result = {"subscribed": []}
                    else:
                        result = await self._dispatch(cmd, req, caller)
                    reply = {"id": req_id, "ok": True, "result": result}
                except json.JSONDecodeError as exc:
                    reply = {"id": req_id, "ok": False, "error": f"not valid JSON: {exc.msg}"}
                except ApiError as exc:
                    reply = {"id": req_id, "ok": False, "error": str(exc)}
                await _send(writer, reply)
                if sub is not None and sub.task is None:
                    sub.task = asyncio.create_task(sub.run(), name="api subscription")
        except (ConnectionError, BrokenPipeError):
            pass
        finally:
            for u in unsubscribe:
                u()
            if sub and sub.task:
                await cancel_and_wait([sub.task])
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._clients.discard(task)

    def _subscribe(self, req: dict[str, Any], writer: asyncio.StreamWriter) -> _Subscription:
        devices = req.get("devices")
        if devices is not None:
            if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
                raise ApiError("'devices' must be a list of device ids")
            unknown = [d for d in devices if d not in self.state.devices]
            if unknown:
                raise ApiError(f"unknown device(s): {', '.join(unknown)}")
        interval = req.get("interval_s", 0.5)
        if not isinstance(interval, int | float) or not 0.02 <= interval <= 60:
            raise ApiError("'interval_s' must be a number between 0.02 and 60")
        return _Subscription(writer, set(devices) if devices is not None else None,
                             float(interval))

    async def _dispatch(self, cmd: Any, req: dict[str, Any], caller: Caller) -> Any:
        token = req.pop("token", None)
        if token is not None:
            if self.token_caller is None or not isinstance(token, str):
                raise ApiError("this gateway accepts no tokens (none are configured)")
            caller = self.token_caller(token, caller)
        command = self.commands.get(cmd) if isinstance(cmd, str) else None
        if command is None:
            known = ", ".join(sorted([*self.commands, "subscribe", "unsubscribe"]))
            raise ApiError(f"unknown command {cmd!r} (known: {known})")
        if not caller.may(command.role):
            raise ApiError(f"'{cmd}' needs the {command.role} role; {caller.user} is "
                           f"{caller.role}")
        result = command.handler(req, caller)
        if inspect.isawaitable(result):
            result = await result
        return result

    def _ping(self, req: dict[str, Any], caller: Caller) -> Any:
        return {"gateway": self.gateway_id, "version": PROTOCOL_VERSION,
                "uptime_s": time.time() - self.started, "user": caller.user,
                "role": caller.role}

    def _snapshot(self, req: dict[str, Any], caller: Caller) -> Any:
        snap = self.state.snapshot()
        snap["gateway"] = self.gateway_id
        return snap

    def _devices(self, req: dict[str, Any], caller: Caller) -> Any:
        now = time.time()
        return [{"id": d.device_id, "nature": str(d.nature), "protocol": d.protocol,
                 "endpoint": d.endpoint, "quality": str(d.device_quality(now)),
                 "last_ok": d.health.last_ok, "errors": d.health.errors,
                 "last_error": d.health.last_error}
                for d in self.state.devices.values()]

    def _device(self, req: dict[str, Any], caller: Caller) -> Any:
        dev = req.get("device")
        if dev not in self.state.devices:
            raise ApiError(f"unknown device {dev!r} (known: "
                           f"{', '.join(sorted(self.state.devices))})")
        return self.state.device_snapshot(dev)

    def _commands(self, req: dict[str, Any], caller: Caller) -> Any:
        return [{"cmd": c.name, "role": c.role, "help": c.help,
                 "allowed": caller.may(c.role)} for c in sorted(self.commands.values(),
                                                                 key=lambda c: c.name)]


async def _send(writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
    writer.write(json.dumps(msg, separators=(",", ":"), default=str).encode() + b"\n")
    await writer.drain()


async def _socket_alive(path: Path) -> bool:
    try:
        _, w = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 1.0)
    except (OSError, TimeoutError):
        return False
    w.close()
    with contextlib.suppress(Exception):
        await w.wait_closed()
    return True


def default_socket_path(gateway_id: str) -> Path:
    """Where the daemon listens when the config names no socket.

    systemd's RuntimeDirectory (``$RUNTIME_DIRECTORY``) first, then /run/autogrid if we may
    write there, then the user's runtime dir.
    """
    name = f"autogrid-{gateway_id}.sock"
    rd = os.environ.get("RUNTIME_DIRECTORY")
    if rd:
        return Path(rd.split(":")[0]) / name
    run = Path("/run/autogrid")
    if run.is_dir() and os.access(run, os.W_OK):
        return run / name
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / name
    return Path(f"/tmp/autogrid-{os.getuid()}") / name
