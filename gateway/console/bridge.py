"""The console's link to the daemon: two ApiClient connections in urwid's asyncio loop.

One connection carries the subscription (a stream of point changes), the other carries
requests, so a slow request never delays live values and vice versa. A token (from
--token-file or AUTOGRID_TOKEN) is sent with every request to claim a configured role.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.apiclient import ApiClient, ApiRequestError, ApiUnavailable
from gateway.console import caps
from gateway.console.data import ConsoleData
from gateway.sitetime import SiteClock
from gateway.summary import safe_text, sanitized

SUBSCRIBE_INTERVAL_S = 0.25  # 4 updates per second at most


class Bridge:
    def __init__(self, path: Path, data: ConsoleData, token: str | None = None,
                 interval_s: float = SUBSCRIBE_INTERVAL_S) -> None:
        self.path = path
        self.data = data
        self.token = token
        self.interval_s = interval_s
        self._req: ApiClient | None = None
        self._sub: ApiClient | None = None
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        """Open both connections and load who we are, the commands and a snapshot.
        Raises ApiUnavailable / ApiRequestError with an operator-readable reason."""
        await self.close()
        self._req = await ApiClient(self.path).connect()
        self._sub = await ApiClient(self.path).connect()
        self.data.ping = await self.call("ping")
        await self.load_commands()
        # Subscribed before the snapshot is taken: a change in between arrives as an event
        # (the other order loses it until the point changes again, e.g. a breaker trip).
        await self._sub.start_subscription(interval_s=self.interval_s)
        self.data.set_snapshot(await self.call("snapshot"))
        await self.refresh_clock()
        if "summary_history" in self.data.commands and not self.data.seeded:
            with contextlib.suppress(ApiRequestError):
                self.data.seed_history(await self.call("summary_history"))
        self.data.connected = True
        self.data.problem = None

    async def close(self) -> None:
        for c in (self._req, self._sub):
            if c is not None:
                await c.close()
        self._req = self._sub = None

    async def call(self, cmd: str, **params: Any) -> Any:
        # Every string a device or the daemon sends is made safe to print here, once,
        # before any screen can show it.
        return sanitized(await self.call_raw(cmd, **params))

    async def call_raw(self, cmd: str, **params: Any) -> Any:
        """The answer as sent: not safe to show until passed through ``sanitized``."""
        if self._req is None:
            raise ApiUnavailable("not connected to the daemon")
        if self.token:
            params["token"] = self.token
        async with self._lock:
            try:
                return await self._req.request(cmd, **params)
            except (OSError, TimeoutError) as exc:
                raise ApiUnavailable(f"lost the daemon: {exc or type(exc).__name__}") from None

    async def load_commands(self) -> None:
        rows = await self.call("commands")
        self.data.commands = {r["cmd"]: r for r in rows}

    async def fetch(self, cap: str, **params: Any) -> None:
        """Ask the command behind ``cap`` and keep its answer (or error) in data.answers."""
        cmd = caps.resolve(cap, self.data.commands)
        if cmd is None:
            self.data.set_answer(cap, error=caps.missing(cap))
            return
        try:
            self.data.set_answer(cap, await self.call(cmd, **params))
        except ApiRequestError as exc:
            self.data.set_answer(cap, error=safe_text(str(exc)))

    async def refresh_fast(self) -> None:
        self.data.set_summary(await self.call("summary"))

    async def refresh_clock(self) -> None:
        """The site's clock and zone, when the daemon tells them (``site_time``)."""
        if "site_time" in self.data.commands:
            self.data.set_clock(SiteClock.from_answer(await self.call("site_time")))

    async def refresh_slow(self) -> None:
        """Statistics and each device's health. The health comes from the snapshot, which
        carries polls and latency (the device list does not, so they froze at connect)."""
        self.data.stats = await self.call("stats")
        await self.refresh_clock()
        snap = await self.call_raw("snapshot")  # the points are not used here: not cleaned
        self.data.set_devices(sanitized([
            {**{k: v for k, v in dev.items() if k != "points"}, "id": dev_id}
            for dev_id, dev in snap.get("devices", {}).items()]))

    async def follow(self, on_update: Callable[[], None]) -> None:
        """Apply subscription events until the connection closes."""
        assert self._sub is not None
        async for event in self._sub.events():
            self.data.apply_update(sanitized(event))
            on_update()


async def probe(path: Path) -> str | None:
    """None when the daemon answers on ``path``, else the reason in words."""
    try:
        async with ApiClient(path) as c:
            await c.request("ping")
    except (ApiUnavailable, ApiRequestError) as exc:
        return str(exc)
    except (OSError, TimeoutError) as exc:
        return str(exc)
    return None


async def close_quietly(bridge: Bridge) -> None:
    with contextlib.suppress(Exception):
        await bridge.close()
