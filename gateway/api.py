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

A bad line (invalid UTF-8 or JSON, NaN, deep nesting, a wrong id) gets a one-line error
and the connection stays usable; a line over MAX_LINE gets the error and the connection is
closed. Connections are capped in total and per uid, with a reserve that only operators
and engineers may use, and closed when idle (``api:`` settings, gateway.apilimits).
Refusals (role, token, handler crash) go to the audit log; repeated bad tokens from one
uid lock its token attempts out for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import pwd
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway.aio import cancel_and_wait
from gateway.apilimits import ApiSettings, ConnectionLimiter, TokenLimiter
from gateway.apiwire import MAX_LINE, BadRequest, encode, parse_request
from gateway.model import DeviceHealth, Reading
from gateway.state import SiteState

log = logging.getLogger("autogrid.api")

PROTOCOL_VERSION = 1
ACCEPT_RETRY_S = 0.5  # pause after a failed accept (out of descriptors)
ACCEPT_QUIET_S = 10.0  # accepts working this long end an out-of-descriptors episode


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


def peer_caller(sock: socket.socket | None,
                role_of: Callable[[int, int], str] = default_role) -> Caller:
    """The kernel's word on who connected (SO_PEERCRED) and the role that gives."""
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
            self.writer.write(encode(msg))
            await self.writer.drain()
            await asyncio.sleep(self.interval_s)


class AuditSink(Protocol):
    """Where refusals are recorded (the control store's audit log, when there is one)."""

    def __call__(self, user: str, action: str, detail: dict[str, Any], ok: bool = True,
                 reason: str | None = None) -> None: ...


class ApiServer:
    def __init__(self, state: SiteState, socket_path: Path, gateway_id: str,
                 extra_stats: Callable[[], dict[str, Any]] | None = None,
                 settings: ApiSettings | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.path = socket_path
        self.gateway_id = gateway_id
        self.extra_stats = extra_stats
        self.settings = settings or ApiSettings()
        self.limiter = ConnectionLimiter(self.settings)
        self.tokens = TokenLimiter(self.settings, clock)
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._inode: tuple[int, int] | None = None  # of the socket file we bound
        self.started = time.time()
        self.role_of: Callable[[int, int], str] = default_role
        # Set by the console policy when tokens are configured: a request carrying
        # "token" runs as the token's name and role (an unknown token raises ApiError).
        self.token_caller: Callable[[str, Caller], Caller] | None = None
        # Set by the control component: refusals are audited there (else logged).
        self.audit_sink: AuditSink | None = None
        self.commands: dict[str, Command] = {}
        self._owned: set[str] = set()  # registered with replace=True: fallbacks yield
        for name, fn, help_ in (
                ("ping", self._ping, "daemon identity and uptime"),
                ("summary", lambda r, c: self.state.summary(), "site power flow"),
                ("snapshot", self._snapshot, "every device with every point"),
                ("devices", self._devices, "device list with health"),
                ("device", self._device, "one device: {device}"),
                ("stats", self._stats, "communication and historian statistics"),
                ("commands", self._commands, "the commands you may use")):
            self.register(name, fn, role="viewer", help=help_)

    def register(self, name: str, handler: Handler, *, role: str = "viewer",
                 help: str = "", replace: bool = False) -> None:
        """Add an API command. ``handler(request, caller)`` returns the result (or an
        awaitable of it) and raises ApiError to refuse with a reason. ``replace`` lets the
        component that owns the data take over a command another one offers as a fallback,
        whichever registers first (components start in any order)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        if name in self._owned and not replace:
            return  # the owner registered already; this is the fallback
        if (name in self.commands and not replace) or name in ("subscribe", "unsubscribe"):
            raise ValueError(f"API command {name!r} is already registered")
        if replace:
            self._owned.add(name)
        self.commands[name] = Command(name, handler, role, help)

    async def start(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RuntimeError(f"cannot create the API socket directory {self.path.parent}: "
                               f"{exc.strerror or exc}") from None
        if self.path.exists() or self.path.is_symlink():
            if await _socket_alive(self.path):  # never unlink a socket someone serves
                raise RuntimeError(f"{self.path}: another daemon is already listening here")
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise RuntimeError(f"cannot listen on the API socket {self.path}: "
                               f"{exc.strerror or exc}") from None
        sock.setblocking(False)
        self._listener = sock
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        os.chmod(self.path, 0o660)
        self._accept_task = asyncio.create_task(self._accept_loop(sock), name="api accept")

    async def stop(self) -> None:
        if self._accept_task is not None:
            await cancel_and_wait([self._accept_task])
            self._accept_task = None
        await cancel_and_wait(list(self._clients))
        if self._listener is not None:
            self._listener.close()
            self._listener = None
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

    async def _accept_loop(self, listener: socket.socket) -> None:
        """Accept connections. Running out of descriptors (EMFILE) is one episode: logged
        once when it starts and once when an accept works again, however often it flaps,
        until accepts have worked for ACCEPT_QUIET_S; failed accepts pause, never spin."""
        loop = asyncio.get_running_loop()
        failed, last_fail, recovered = 0, 0.0, False
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:
                if failed == 0:
                    log.error("API: cannot accept connections on %s: %s (%d API connections "
                              "open); retrying every %.1f s", self.path,
                              exc.strerror or exc, self.limiter.total, ACCEPT_RETRY_S)
                failed += 1
                last_fail = loop.time()
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            if failed and not recovered:
                log.warning("API: accepting connections again on %s (%d attempts failed)",
                            self.path, failed)
                recovered = True
            if failed and loop.time() - last_fail > ACCEPT_QUIET_S:
                failed, recovered = 0, False  # the episode is over
            task = asyncio.create_task(self._connection(conn), name="api client")
            self._clients.add(task)
            task.add_done_callback(self._clients.discard)

    async def _connection(self, conn: socket.socket) -> None:
        """Admit (or refuse with a reason) one accepted connection, then serve it."""
        loop = asyncio.get_running_loop()
        caller = peer_caller(conn, self.role_of)
        try:
            reader = asyncio.StreamReader(limit=MAX_LINE)
            protocol = asyncio.StreamReaderProtocol(reader)
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, conn)
        except OSError:
            conn.close()
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        why = self.limiter.admit(caller.uid, caller.may("operator"))
        try:
            if why is not None:
                if self.limiter.refused == 1 or self.limiter.refused % 1000 == 0:
                    log.warning("API: refused a connection from %s: %s (%d refused so far)",
                                caller.user, why, self.limiter.refused)
                with contextlib.suppress(ConnectionError):
                    await _send(writer, {"id": None, "ok": False, "error": why})
                return
            try:
                await self._serve(reader, writer, caller)
            finally:
                self.limiter.release(caller.uid)
        except Exception as exc:  # a bug of ours: one line, the connection closes
            log.error("API connection from %s failed: %s: %s", caller.user,
                      type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     caller: Caller) -> None:
        sub: _Subscription | None = None
        unsubscribe: list[Callable[[], None]] = []
        idle_s = self.settings.idle_timeout_s
        try:
            while True:
                try:
                    if sub is None:
                        line = await asyncio.wait_for(reader.readline(), idle_s)
                    else:  # a subscriber is busy receiving, not idle
                        line = await reader.readline()
                except TimeoutError:
                    await _send(writer, {"id": None, "ok": False,
                                         "error": f"no request for {idle_s:g} s; closing"})
                    return
                except (ValueError, asyncio.LimitOverrunError):
                    await _send(writer, {"id": None, "ok": False,
                                         "error": f"request longer than {MAX_LINE} bytes; "
                                                  "closing"})
                    return
                if not line:
                    return
                req_id: Any = None
                try:
                    req_id, req = parse_request(line)
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
                except (BadRequest, ApiError) as exc:
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
        """Check the token and the role, run the handler; every refusal on the way and every
        handler crash is audited (a handler's own refusals are audited by its wrapper)."""
        token = req.pop("token", None)
        name = cmd if isinstance(cmd, str) else repr(cmd)
        if token is not None:
            caller = self._token_caller(token, name, req, caller)
        command = self.commands.get(cmd) if isinstance(cmd, str) else None
        if command is None:
            known = ", ".join(sorted([*self.commands, "subscribe", "unsubscribe"]))
            why = f"unknown command {_short(cmd)} (known: {known})"
            self._refused(caller, name, req, why)
            raise ApiError(why)
        if not caller.may(command.role):
            why = f"'{cmd}' needs the {command.role} role; {caller.user} is {caller.role}"
            self._refused(caller, name, req, why)
            raise ApiError(why)
        try:
            result = command.handler(req, caller)
            if inspect.isawaitable(result):
                result = await result
        except ApiError:
            raise
        except Exception as exc:  # a handler bug: one line in the log and to the client
            why = f"internal error: {type(exc).__name__}: {exc}"
            log.error("API command %r from %s failed: %s", name, caller.user, why,
                      exc_info=log.isEnabledFor(logging.DEBUG))
            self._refused(caller, name, req, why)
            raise ApiError(f"'{name}' failed: {why} (the request was not carried out)"
                           ) from None
        return result

    def _token_caller(self, token: Any, name: str, req: dict[str, Any], caller: Caller
                      ) -> Caller:
        """The token's identity; bad tokens count towards a lockout of the peer's uid."""
        left = self.tokens.locked_for(caller.uid)
        if left is not None:
            raise ApiError(f"too many bad tokens from {caller.user}; token attempts are "
                           f"refused for another {left:.0f} s")
        if self.token_caller is None or not isinstance(token, str):
            why = "this gateway accepts no tokens (none are configured)"
        else:
            try:
                return self.token_caller(token, caller)
            except ApiError as exc:
                why = str(exc)
        self._refused(caller, name, req, f"bad token: {why}")
        if self.tokens.failed(caller.uid):
            s = self.settings
            lockout = (f"{s.token_failures} bad tokens within {s.token_window_s:g} s: token "
                       f"attempts from {caller.user} (uid {caller.uid}) refused for "
                       f"{s.token_lockout_s:g} s")
            log.warning("API: %s", lockout)
            self._refused(caller, "token_lockout", {}, lockout)
        raise ApiError(why)

    def _refused(self, caller: Caller, action: str, req: dict[str, Any], why: str) -> None:
        """Audit a refusal (or log it when there is no audit store); never raises."""
        detail = {k: v for k, v in req.items() if k not in ("cmd", "id", "token")}
        if self.audit_sink is not None:
            try:
                self.audit_sink(caller.user, action, detail, ok=False, reason=why)
                return
            except Exception as exc:  # the audit store's own trouble is reported there
                log.debug("API: auditing a refusal failed: %s", exc)
        log.info("API: refused %s from %s: %s", _short(action), caller.user, why)

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

    def _stats(self, req: dict[str, Any], caller: Caller) -> Any:
        stats = self.extra_stats() if self.extra_stats else {}
        return {**stats, "api": {"connections": self.limiter.total,
                                 "refused_connections": self.limiter.refused}}

    def _device(self, req: dict[str, Any], caller: Caller) -> Any:
        dev = req.get("device")
        if not isinstance(dev, str) or dev not in self.state.devices:
            raise ApiError(f"unknown device {dev!r} (known: "
                           f"{', '.join(sorted(self.state.devices))})")
        return self.state.device_snapshot(dev)

    def _commands(self, req: dict[str, Any], caller: Caller) -> Any:
        return [{"cmd": c.name, "role": c.role, "help": c.help,
                 "allowed": caller.may(c.role)} for c in sorted(self.commands.values(),
                                                                 key=lambda c: c.name)]


async def _send(writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
    writer.write(encode(msg))
    await writer.drain()


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
