"""The one write path: the controller's setpoints, protection's commands and operators'
overrides all reach devices here, through DeviceIO.write (read-back verified by the
driver), one writer task per device so a slow device never delays another or the cycle.

- A value counts as written only when the device took it (its read-back); a failed write
  is retried with a doubling backoff capped at ``retry_max_s`` (sooner when the device
  comes back online), until it is written or superseded by a newer value.
- Commands (protection's zero, breaker trip/close) go before queued setpoints and are
  retried until confirmed; while one is not, an alarm says so.
- The device handle is looked up for every write, so a device a config reload replaced
  is written through its new handle.
- Unchanged values (within the dead-band) are not rewritten until half the device's
  watchdog (its ``watchdog_s`` point; ``rewrite_s`` without one) has passed.
- Every attempt's outcome goes to the ``on_outcome`` listeners (the controller), and to
  whoever waits on it (an API reply).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from drivers.base import DeviceIO, DriverError
from gateway.aio import cancel_and_wait
from gateway.control.alarms import ControlStore
from gateway.model import DeviceHealth, Nature, PointValue, Quality
from gateway.state import SiteState

log = logging.getLogger("autogrid.control.applier")
PCT_DEADBAND = 0.5
RETRY_FIRST_S = 0.2


@dataclass(frozen=True)
class WriteOutcome:
    """What one write attempt came to: taken (with the device's read-back) or failed."""

    device: str
    point: str
    value: PointValue
    ok: bool
    at: float  # wall clock of the answer (or of the failure)
    read_back: PointValue | None = None
    error: str | None = None
    attempt: int = 1
    command: bool = False
    sent: bool = True  # False: no handle to write through (nothing reached the device)

    def as_dict(self) -> dict[str, Any]:
        if self.ok:
            return {"written": True, "read_back": self.read_back, "at": self.at}
        return {"written": False, "error": self.error, "at": self.at}


@dataclass
class _Intent:
    value: PointValue
    command: bool  # retried until confirmed, alarmed while not
    attempts: int = 0
    next_try: float = 0.0  # monotonic
    error: str | None = None
    waiters: list[asyncio.Future[WriteOutcome]] = field(default_factory=list)


@dataclass
class _Dev:
    queue: dict[str, _Intent] = field(default_factory=dict)  # point -> what to write
    written: dict[str, tuple[PointValue, float]] = field(default_factory=dict)  # taken
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    inflight: _Intent | None = None  # being written now


# A breaker command undoes the opposite one still being retried.
OPPOSITE = {"trip": "close", "close": "trip"}


def command_label(point: str, value: PointValue) -> str:
    """How an alarm names a command: "zero p_set_kw", "trip", "p_set_kw = 3"."""
    if point in OPPOSITE and value is True:
        return point
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return f"zero {point}"
    return f"{point} = {value!r}"


class Applier:
    def __init__(self, ios: Mapping[str, DeviceIO], state: SiteState, store: ControlStore,
                 rewrite_s: float = 30.0, deadband_kw: dict[str, float] | None = None,
                 retry_max_s: float = 5.0, retry_first_s: float = RETRY_FIRST_S) -> None:
        self.ios = ios  # the daemon's live table: a reload swaps entries in place
        self.state = state
        self.store = store
        self.rewrite_s = rewrite_s
        self.deadband_kw = deadband_kw or {}
        self.retry_max_s = retry_max_s
        self.retry_first_s = retry_first_s
        self.devs: dict[str, _Dev] = {}
        self.writes = 0
        self.errors = 0
        self.skipped = 0
        self.command_issued: dict[tuple[str, str], float] = {}  # for latency benches
        self.on_outcome: list[Callable[[WriteOutcome], None]] = []
        self.stopped = False  # after stop(): nothing more is written (shutdown order)
        self._unsub: Callable[[], None] | None = state.on_health(self._health)

    def rewrite_interval(self, device_id: str) -> float:
        dev = self.state.devices.get(device_id)
        wd = dev.readings.get("watchdog_s") if dev else None
        v = wd.value if wd is not None else None
        if isinstance(v, int | float) and not isinstance(v, bool) and v > 0:
            return min(self.rewrite_s, float(v) / 2.0)
        return self.rewrite_s

    # -- intents ------------------------------------------------------------------------------
    def submit(self, setpoints: dict[str, dict[str, PointValue]], now: float | None = None
               ) -> int:
        """Queue what changed (or is due for a rewrite); returns how many were queued."""
        if self.stopped:  # a late setpoint (a cluster watch) during shutdown: not written
            return 0
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
                queued_now = d.queue.get(point)
                if queued_now is not None and queued_now.command:
                    self.skipped += 1  # a command on this point is being confirmed
                    continue
                if queued_now is None and last is not None and now - last[1] < interval \
                        and self._same(dev_id, point, last[0], value):
                    self.skipped += 1
                    continue
                self._queue(dev_id, d, point, value, command=False)
                queued += 1
            self._kick(dev_id, d)
        return queued

    def command(self, dev_id: str, point: str, value: PointValue
                ) -> asyncio.Future[WriteOutcome] | None:
        """Write at once, before any queued setpoint, and retry until the device takes it
        (protection's zero, breaker trip/close). Never waits; the future (None for a
        device this gateway has no handle for) resolves with the first outcome."""
        if dev_id not in self.ios:
            return None
        if self.stopped:
            done: asyncio.Future[WriteOutcome] = asyncio.get_running_loop().create_future()
            done.set_result(WriteOutcome(dev_id, point, value, False, time.time(),
                                         error="control stopped: not written", command=True,
                                         sent=False))
            return done
        self.command_issued[(dev_id, point)] = time.time()
        d = self.devs.setdefault(dev_id, _Dev())
        opposite = OPPOSITE.get(point)
        if opposite is not None and opposite in d.queue and d.queue[opposite].command:
            self._drop(dev_id, d, opposite, "superseded by " + point)
        fut = self._queue(dev_id, d, point, value, command=True, waiter=True)
        self._kick(dev_id, d)
        return fut

    def cancel_command(self, dev_id: str, point: str, why: str) -> None:
        """Stop retrying a command that is still queued (an operator's command from
        another gateway, answered as failed: it must not act later)."""
        d = self.devs.get(dev_id)
        intent = d.queue.get(point) if d else None
        if d is not None and intent is not None and intent.command:
            self._drop(dev_id, d, point, why)

    def _queue(self, dev_id: str, d: _Dev, point: str, value: PointValue, command: bool,
               waiter: bool = False) -> asyncio.Future[WriteOutcome] | None:
        old = d.queue.get(point)
        intent = _Intent(value, command)
        if old is not None:  # a newer value for a point still failing keeps its backoff
            intent.attempts, intent.next_try, intent.error = (old.attempts, old.next_try,
                                                              old.error)
            if old is not d.inflight:  # not written yet: its waiters get the new value's
                intent.waiters = old.waiters
            if command and not old.command:
                intent.next_try = 0.0  # protection does not wait for a setpoint's backoff
        d.queue[point] = intent
        if not waiter:
            return None
        fut: asyncio.Future[WriteOutcome] = asyncio.get_running_loop().create_future()
        intent.waiters.append(fut)
        return fut

    def _drop(self, dev_id: str, d: _Dev, point: str, why: str) -> None:
        intent = d.queue.pop(point, None)
        if intent is None:
            return
        self.store.clear(dev_id, f"command:{point}")
        for fut in intent.waiters:
            if not fut.done():
                fut.set_result(WriteOutcome(dev_id, point, intent.value, False, time.time(),
                                            error=why, attempt=intent.attempts,
                                            command=intent.command))

    def forget(self, dev_id: str) -> None:
        """The device was replaced or removed by a reload: what the old handle took says
        nothing about the new device, so everything is written afresh."""
        d = self.devs.get(dev_id)
        if d is not None:
            d.written.clear()
            if dev_id not in self.ios:
                for point in list(d.queue):
                    self._drop(dev_id, d, point, "device removed from the config")
            else:
                for intent in d.queue.values():
                    intent.next_try = 0.0
                d.wake.set()

    def waiter(self, dev_id: str, point: str) -> asyncio.Future[WriteOutcome] | None:
        """A future of the next outcome of the write queued for ``point`` (None when
        nothing is queued: the device already has the value)."""
        d = self.devs.get(dev_id)
        intent = d.queue.get(point) if d else None
        if intent is None:
            return None
        fut: asyncio.Future[WriteOutcome] = asyncio.get_running_loop().create_future()
        intent.waiters.append(fut)
        return fut

    def last_written(self, dev_id: str, point: str) -> PointValue | None:
        d = self.devs.get(dev_id)
        w = d.written.get(point) if d else None
        return w[0] if w else None

    def pending(self, dev_id: str) -> dict[str, PointValue]:
        """What is still waiting to be written (or retried) to ``dev_id``."""
        d = self.devs.get(dev_id)
        return {p: i.value for p, i in d.queue.items()} if d else {}

    def _kick(self, dev_id: str, d: _Dev) -> None:
        if not d.queue:
            return
        d.wake.set()
        if d.task is None or d.task.done():
            d.task = asyncio.create_task(self._writer(dev_id, d), name=f"setpoints {dev_id}")

    def _health(self, dev_id: str, health: DeviceHealth) -> None:
        """A device back online gets its failed writes now, not at the end of a backoff."""
        d = self.devs.get(dev_id)
        if d is None or health.quality is not Quality.GOOD or not d.queue:
            return
        for intent in d.queue.values():
            intent.next_try = 0.0
        d.wake.set()

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

    # -- the writer ---------------------------------------------------------------------------
    def _next(self, d: _Dev, now: float) -> tuple[str | None, float | None]:
        """The point to write now (commands first), else how long until one is due."""
        wait: float | None = None
        for want_command in (True, False):
            for point, intent in d.queue.items():
                if intent.command is not want_command:
                    continue
                if intent.next_try <= now:
                    return point, None
                left = intent.next_try - now
                wait = left if wait is None else min(wait, left)
        return None, wait

    async def _writer(self, dev_id: str, d: _Dev) -> None:
        while True:
            d.wake.clear()
            point, wait = self._next(d, time.monotonic())
            if point is None:
                if wait is None:
                    await d.wake.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(d.wake.wait(), wait)
                continue
            intent = d.queue[point]
            intent.attempts += 1
            d.inflight = intent
            try:
                outcome = await self._write(dev_id, point, intent)
            finally:
                d.inflight = None
            if d.queue.get(point) is intent:  # not superseded while the write was out
                if outcome.ok:
                    del d.queue[point]
                else:
                    intent.next_try = time.monotonic() + min(
                        self.retry_max_s,
                        self.retry_first_s * 2 ** min(intent.attempts - 1, 30))
            elif outcome.ok:
                nxt = d.queue.get(point)
                if nxt is not None:  # the newer value starts afresh
                    nxt.attempts, nxt.next_try = 0, 0.0
            for fut in intent.waiters:
                if not fut.done():
                    fut.set_result(outcome)
            intent.waiters = []
            for listener in self.on_outcome:
                try:
                    listener(outcome)
                except Exception:  # a listener bug must not stop the writes
                    log.exception("outcome listener failed")

    async def _write(self, dev_id: str, point: str, intent: _Intent) -> WriteOutcome:
        value = intent.value
        io = self.ios.get(dev_id)  # per write: a reload may have replaced the handle
        error: str | None = None
        read_back: PointValue | None = None
        if io is None:
            error = "device not attached (removed from the config)"
        else:
            try:
                read_back = await io.write(point, value)
            except DriverError as exc:
                error = str(exc) or type(exc).__name__
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a driver bug must not end control
                log.exception("%s: unexpected error writing %s", dev_id, point)
                error = f"internal error: {type(exc).__name__}: {exc}"
        at = time.time()
        if error is not None:
            self.errors += 1
            self._failed(dev_id, point, intent, error)
            return WriteOutcome(dev_id, point, value, False, at, error=error,
                                attempt=intent.attempts, command=intent.command,
                                sent=io is not None)
        self.writes += 1
        d = self.devs.setdefault(dev_id, _Dev())
        d.written[point] = (value, time.monotonic())
        self.store.clear(dev_id, f"write:{point}")
        if intent.command and self.store.is_active(dev_id, f"command:{point}"):
            log.info("%s: %s confirmed after %d attempts", dev_id,
                     command_label(point, value), intent.attempts)
        self.store.clear(dev_id, f"command:{point}")
        return WriteOutcome(dev_id, point, value, True, at, read_back=read_back,
                            attempt=intent.attempts, command=intent.command)

    def _failed(self, dev_id: str, point: str, intent: _Intent, error: str) -> None:
        intent.error = error
        if intent.command:
            key = f"command:{point}"
            if not self.store.is_active(dev_id, key):
                log.error("%s: %s not confirmed: %s", dev_id,
                          command_label(point, intent.value), error)
            self.store.raise_(dev_id, key, "critical",
                              f"{dev_id}: {command_label(point, intent.value)} not confirmed: "
                              f"{error}; retrying")
            return
        if not self.store.is_active(dev_id, f"write:{point}"):
            log.warning("%s: writing %s = %r failed: %s", dev_id, point, intent.value, error)
        self.store.raise_(dev_id, f"write:{point}", "warning",
                          f"setpoint {point} = {intent.value!r} not applied: {error}; "
                          f"retrying")

    async def stop(self) -> None:
        self.stopped = True
        if self._unsub is not None:
            self._unsub()
            self._unsub = None
        tasks: list[asyncio.Task[Any]] = [d.task for d in self.devs.values() if d.task]
        await cancel_and_wait(tasks)
        for dev_id, d in self.devs.items():
            for point in list(d.queue):
                intent = d.queue[point]
                for fut in intent.waiters:
                    if not fut.done():
                        fut.set_result(WriteOutcome(dev_id, point, intent.value, False,
                                                    time.time(), error="control stopped",
                                                    attempt=intent.attempts,
                                                    command=intent.command))

    def stats(self) -> dict[str, Any]:
        unconfirmed = [f"{dev}.{p}" for dev, d in self.devs.items()
                       for p, i in d.queue.items() if i.command and i.attempts]
        return {"writes": self.writes, "errors": self.errors, "skipped": self.skipped,
                "unconfirmed_commands": unconfirmed}
