"""Setpoint applier: writes the controller's setpoints through DeviceIO.write (read-back
verified by the driver), one writer task per device so a slow device never delays another
or the cycle. Unchanged values (within the dead-band) are not rewritten until half the
device's watchdog (its ``watchdog_s`` point; ``rewrite_s`` without one) has passed. A
WriteError raises an alarm (cleared by the next good write), never a crash. Protection's
commands bypass the queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from drivers.base import DeviceIO, DriverError
from gateway.aio import cancel_and_wait
from gateway.control.alarms import ControlStore
from gateway.model import Nature, PointValue
from gateway.state import SiteState

log = logging.getLogger("autogrid.control.applier")
PCT_DEADBAND = 0.5


@dataclass
class _Dev:
    pending: dict[str, PointValue] = field(default_factory=dict)
    written: dict[str, tuple[PointValue, float]] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Applier:
    def __init__(self, ios: dict[str, DeviceIO], state: SiteState, store: ControlStore,
                 rewrite_s: float = 30.0, deadband_kw: dict[str, float] | None = None) -> None:
        self.ios = ios
        self.state = state
        self.store = store
        self.rewrite_s = rewrite_s
        self.deadband_kw = deadband_kw or {}
        self.devs: dict[str, _Dev] = {}
        self._commands: set[asyncio.Task[bool]] = set()
        self.writes = 0
        self.errors = 0
        self.skipped = 0
        self.command_issued: dict[tuple[str, str], float] = {}  # for latency benches
        # called after each queued setpoint the device took: (device, point, value, time)
        self.on_written: list[Callable[[str, str, PointValue, float], None]] = []

    def rewrite_interval(self, device_id: str) -> float:
        dev = self.state.devices.get(device_id)
        wd = dev.readings.get("watchdog_s") if dev else None
        v = wd.value if wd is not None else None
        if isinstance(v, int | float) and not isinstance(v, bool) and v > 0:
            return min(self.rewrite_s, float(v) / 2.0)
        return self.rewrite_s

    def submit(self, setpoints: dict[str, dict[str, PointValue]], now: float | None = None
               ) -> int:
        """Queue what changed (or is due for a rewrite); returns how many were queued."""
        now = time.monotonic() if now is None else now
        queued = 0
        # Reductions first: the writers start in this order on a shared link, so power
        # that goes down is written before power that goes up (no transient overshoot).
        for dev_id, points in sorted(setpoints.items(), key=lambda kv: self._delta(*kv)):
            if dev_id not in self.ios:
                continue
            d = self.devs.setdefault(dev_id, _Dev())
            interval = self.rewrite_interval(dev_id)
            for point, value in points.items():
                last = d.written.get(point)
                if last is not None and now - last[1] < interval and \
                        self._same(dev_id, point, last[0], value):
                    self.skipped += 1
                    continue
                d.pending[point] = value
                queued += 1
            if d.pending:
                d.wake.set()
                if d.task is None or d.task.done():
                    d.task = asyncio.create_task(self._writer(dev_id, d),
                                                 name=f"setpoints {dev_id}")
        return queued

    def _delta(self, dev_id: str, points: dict[str, PointValue]) -> float:
        d = self.devs.get(dev_id)
        v, last = points.get("p_set_kw"), d.written.get("p_set_kw") if d else None
        if isinstance(v, int | float) and last is not None and isinstance(last[0], int | float):
            dev = self.state.devices.get(dev_id)
            sign = -1.0 if dev is not None and dev.nature is Nature.BESS else 1.0  # + = export
            return sign * (float(v) - float(last[0]))
        return 0.0

    def _same(self, dev_id: str, point: str, old: PointValue, new: PointValue) -> bool:
        if isinstance(new, bool) or isinstance(old, bool) or not isinstance(new, int | float) \
                or not isinstance(old, int | float):
            return old == new
        band = PCT_DEADBAND if point.endswith("_pct") else self.deadband_kw.get(dev_id, 0.2)
        if new == 0 and old != 0:
            return False  # going to zero is always written
        return abs(float(new) - float(old)) < band

    async def _writer(self, dev_id: str, d: _Dev) -> None:
        io = self.ios[dev_id]
        while True:
            await d.wake.wait()
            d.wake.clear()
            while d.pending:
                point, value = next(iter(d.pending.items()))
                del d.pending[point]
                ok = await self._write(io, dev_id, point, value)
                d.written[point] = (value, time.monotonic())
                if ok:
                    at = time.time()
                    for listener in self.on_written:
                        listener(dev_id, point, value, at)

    async def _write(self, io: DeviceIO, dev_id: str, point: str, value: PointValue) -> bool:
        try:
            await io.write(point, value)
        except DriverError as exc:
            self.errors += 1
            if not self.store.is_active(dev_id, f"write:{point}"):
                log.warning("%s: writing %s = %r failed: %s", dev_id, point, value, exc)
            self.store.raise_(dev_id, f"write:{point}", "warning",
                              f"setpoint {point} = {value!r} not applied: {exc}")
            return False
        except Exception as exc:  # a driver bug must not end control
            self.errors += 1
            log.exception("%s: unexpected error writing %s", dev_id, point)
            self.store.raise_(dev_id, f"write:{point}", "warning",
                              f"setpoint {point} failed: {type(exc).__name__}: {exc}")
            return False
        self.writes += 1
        self.store.clear(dev_id, f"write:{point}")
        return True

    def command(self, dev_id: str, point: str, value: Any) -> None:
        """Write at once, outside the queue (protection, breakers); never waits."""
        io = self.ios.get(dev_id)
        if io is None:
            return
        self.command_issued[(dev_id, point)] = time.time()
        d = self.devs.setdefault(dev_id, _Dev())
        d.pending.pop(point, None)
        d.written[point] = (value, time.monotonic())
        task = asyncio.create_task(self._write(io, dev_id, point, value),
                                   name=f"command {dev_id}.{point}")
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)

    async def stop(self) -> None:
        tasks: list[asyncio.Task[Any]] = [d.task for d in self.devs.values() if d.task]
        await cancel_and_wait(tasks + list(self._commands))

    def stats(self) -> dict[str, Any]:
        return {"writes": self.writes, "errors": self.errors, "skipped": self.skipped}
