"""Client for the daemon's Unix-socket API (used by `autogrid status`, the console, tests)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from gateway.apiwire import MAX_LINE


class ApiUnavailable(Exception):
    """The daemon cannot be reached; the message says why in operator terms."""


class ApiRequestError(Exception):
    """The daemon refused a request; the message is its reason."""


class ApiClient:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._next_id = 0
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def connect(self, timeout_s: float = 3.0) -> ApiClient:
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.path), limit=16 * MAX_LINE), timeout_s)
        except FileNotFoundError:
            raise ApiUnavailable(f"the daemon is not running (no socket at {self.path})") from None
        except PermissionError:
            raise ApiUnavailable(f"access to {self.path} denied: run as the autogrid user or "
                                 f"a member of its group") from None
        except ConnectionRefusedError:
            raise ApiUnavailable(f"the daemon is not running ({self.path} refuses "
                                 f"connections; stale socket?)") from None
        except TimeoutError:
            raise ApiUnavailable(f"the daemon did not answer on {self.path} within "
                                 f"{timeout_s:.0f} s") from None
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise ApiUnavailable(f"the daemon is not running (no socket at {self.path})"
                                     ) from None
            raise ApiUnavailable(f"cannot connect to {self.path}: {exc.strerror}") from None
        return self

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
            self._writer = None

    async def __aenter__(self) -> ApiClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(self, cmd: str, timeout_s: float = 5.0, **params: Any) -> Any:
        if self._writer is None or self._reader is None:
            raise ApiUnavailable("not connected")
        self._next_id += 1
        req_id = self._next_id
        msg = {"id": req_id, "cmd": cmd, **params}
        try:
            line_out = json.dumps(msg, allow_nan=False)
        except ValueError:  # NaN/Infinity are not JSON: the daemon would refuse the line
            raise ApiRequestError(f"{cmd}: every number must be finite (NaN and Infinity "
                                  f"cannot be sent)") from None
        self._writer.write(line_out.encode() + b"\n")
        await self._writer.drain()
        while True:
            line = await asyncio.wait_for(self._reader.readline(), timeout_s)
            if not line:
                raise ApiUnavailable("the daemon closed the connection")
            reply = json.loads(line)
            if "event" in reply:
                self._events.put_nowait(reply)
                continue
            if reply.get("id") != req_id:
                if reply.get("id") is None and reply.get("ok") is False:
                    # the daemon could not read our line (so it has no id to echo)
                    raise ApiRequestError(reply.get("error", "request refused"))
                continue
            if not reply.get("ok"):
                raise ApiRequestError(reply.get("error", "request refused"))
            return reply.get("result")

    async def subscribe(self, devices: list[str] | None = None, interval_s: float = 0.5
                        ) -> AsyncIterator[dict[str, Any]]:
        """Yield update events until the connection closes."""
        await self.start_subscription(devices, interval_s)
        async for event in self.events():
            yield event

    async def start_subscription(self, devices: list[str] | None = None,
                                 interval_s: float = 0.5) -> Any:
        """Ask for update events on this connection; when this returns, every later
        change is sent (read them with ``events()``)."""
        params: dict[str, Any] = {"interval_s": interval_s}
        if devices is not None:
            params["devices"] = devices
        return await self.request("subscribe", **params)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Yield the update events of a started subscription until the connection closes."""
        if self._reader is None:
            raise ApiUnavailable("not connected")
        while not self._events.empty():
            yield self._events.get_nowait()
        while True:
            line = await self._reader.readline()
            if not line:
                return
            msg = json.loads(line)
            if "event" in msg:
                yield msg
