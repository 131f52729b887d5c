"""The poller: one task per endpoint, walking that endpoint's devices on a schedule.

A device is read every ``interval_s`` at a fixed phase inside the interval, taken from a
stable hash of its id, so thousands of 1 Hz devices are spread over the second instead of
firing at the same instant (and contending for one endpoint's lock). An endpoint whose
link can carry several requests at once (``io.pipeline_window`` > 1, Modbus TCP with
``max_in_flight``) gets that many device reads in flight; any other endpoint reads one
device after the other. Endpoints are polled in parallel.

A poll that starts after its slot is late (lateness is kept as a metric); a device whose
read overran whole slots skips them (counted in ``polls_skipped``, logged once per episode
per endpoint, and again when the endpoint is back on schedule). A failed read marks the
device offline at once and is logged once; the recovery is logged once too. Nothing a
device does can end the daemon.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
import zlib
from collections import deque
from dataclasses import dataclass, field

from drivers.base import DeviceIO, DriverError
from gateway.aio import cancel_and_wait, cancel_requested
from gateway.state import SiteState

log = logging.getLogger("autogrid.poller")

ON_TIME_POLLS = 20  # polls in a row without a skip that end an overrun episode
LATENESS_SAMPLES = 20_000  # recent poll start lateness kept for percentiles


def phase_of(device_id: str, interval_s: float) -> float:
    """Where in its interval a device is polled: stable across restarts and machines."""
    if interval_s <= 0:
        return 0.0
    return (zlib.crc32(device_id.encode()) / 2**32) * interval_s


@dataclass
class PollJob:
    """One device on the schedule. ``task`` is the endpoint task that polls it."""

    io: DeviceIO
    interval_s: float
    task: asyncio.Task[None] | None = None
    due: float = 0.0  # loop time of the next slot
    skipped: int = 0
    active: bool = True
    reading: bool = False
    waiter: asyncio.Future[None] | None = None  # remove() waits here for a read in flight


@dataclass
class _Lane:
    """The devices of one endpoint and the task that polls them."""

    key: str
    window: int
    heap: list[tuple[float, int, PollJob]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    wake: asyncio.Future[None] | None = None
    in_flight: int = 0
    slot_free: asyncio.Future[None] | None = None
    overrun_since: float | None = None  # loop time the current overrun episode began
    overrun_skipped: int = 0
    on_time: int = 0
    children: set[asyncio.Task[None]] = field(default_factory=set)  # reads in the window


class Poller:
    def __init__(self, state: SiteState, on_time_polls: int = ON_TIME_POLLS) -> None:
        self.state = state
        self.on_time_polls = on_time_polls
        self.jobs: dict[str, PollJob] = {}
        self._lanes: dict[str, _Lane] = {}
        self._seq = 0
        self.lateness_ms: deque[float] = deque(maxlen=LATENESS_SAMPLES)
        self.latency_ms: deque[float] = deque(maxlen=LATENESS_SAMPLES)  # good reads only
        self.polls = 0
        self.skipped = 0

    # ---- schedule --------------------------------------------------------------------

    def add(self, io: DeviceIO, interval_s: float) -> None:
        if io.device_id in self.jobs:
            raise ValueError(f"device '{io.device_id}' is already polled")
        loop = asyncio.get_running_loop()
        job = PollJob(io, interval_s)
        now = loop.time()
        if interval_s > 0:
            job.due = now + (phase_of(io.device_id, interval_s) - now) % interval_s
        else:
            job.due = now
        lane = self._lanes.get(io.endpoint)
        if lane is None:
            window = max(1, int(getattr(io, "pipeline_window", 1)))
            lane = _Lane(io.endpoint, window)
            self._lanes[io.endpoint] = lane
            lane.task = asyncio.create_task(self._run(lane), name=f"poll {io.endpoint}")
        job.task = lane.task
        self.jobs[io.device_id] = job
        self._push(lane, job)

    async def remove(self, device_id: str) -> None:
        job = self.jobs.pop(device_id, None)
        if job is None:
            return
        job.active = False  # dropped from the heap when it comes up
        if job.reading:  # let the read in flight end (bounded by the device's timeout)
            job.waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(job.waiter)
        lane = self._lanes.get(job.io.endpoint)
        if lane is not None and not any(j.io.endpoint == lane.key for j in self.jobs.values()):
            del self._lanes[lane.key]
            if lane.task is not None:
                await cancel_and_wait([lane.task])

    async def stop(self) -> None:
        await cancel_and_wait([lane.task for lane in self._lanes.values() if lane.task])
        self._lanes.clear()
        self.jobs.clear()

    def _push(self, lane: _Lane, job: PollJob) -> None:
        self._seq += 1
        heapq.heappush(lane.heap, (job.due, self._seq, job))
        if lane.wake is not None and not lane.wake.done() and lane.heap[0][2] is job:
            lane.wake.set_result(None)  # a new earliest slot: re-arm the wait

    # ---- one read --------------------------------------------------------------------

    async def poll_once(self, job: PollJob) -> bool:
        """One read of one device into SiteState. True when the read succeeded."""
        io = job.io
        t0 = time.perf_counter()
        try:
            values = await io.read()
        except DriverError as exc:
            self._failed(io.device_id, str(exc) or type(exc).__name__)
            return False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a driver bug must not end the daemon
            log.exception("%s: unexpected error from driver", io.device_id)
            self._failed(io.device_id, f"internal error: {type(exc).__name__}: {exc}")
            return False
        latency_ms = (time.perf_counter() - t0) * 1000.0
        self.latency_ms.append(latency_ms)
        health = self.state.devices[io.device_id].health
        if health.consecutive_errors:
            log.info("%s: recovered after %d failed polls", io.device_id,
                     health.consecutive_errors)
        self.state.update(io.device_id, values, time.time(), latency_ms)
        return True

    def _failed(self, device_id: str, error: str) -> None:
        health = self.state.devices[device_id].health
        previous = health.last_error
        self.state.fail(device_id, error, time.time())
        if health.consecutive_errors == 1:
            log.error("%s: offline: %s", device_id, error)
        elif error != previous and health.consecutive_errors % 100 == 0:
            log.warning("%s: still offline after %d polls: %s", device_id,
                        health.consecutive_errors, error)

    # ---- the endpoint task -----------------------------------------------------------

    async def _run(self, lane: _Lane) -> None:
        try:
            await self._walk(lane)
        finally:
            if lane.children:
                for child in lane.children:
                    child.cancel()
                await asyncio.gather(*lane.children, return_exceptions=True)

    async def _walk(self, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not lane.heap:
                lane.wake = loop.create_future()
                await lane.wake
                continue
            due, _, job = lane.heap[0]
            if not job.active:
                heapq.heappop(lane.heap)
                continue
            now = loop.time()
            if due > now:
                lane.wake = loop.create_future()
                timer = loop.call_at(due, _resolve, lane.wake)
                try:
                    await lane.wake
                finally:
                    timer.cancel()
                continue
            heapq.heappop(lane.heap)
            if job.interval_s > 0:
                self.lateness_ms.append((now - due) * 1000.0)
            if lane.window == 1:
                await self._poll_and_reschedule(lane, job, loop)
                continue
            while lane.in_flight >= lane.window:
                lane.slot_free = loop.create_future()
                await lane.slot_free
            lane.in_flight += 1
            child = loop.create_task(self._poll_in_window(lane, job, loop),
                                     name=f"poll {job.io.device_id}")
            lane.children.add(child)
            child.add_done_callback(lane.children.discard)

    async def _poll_in_window(self, lane: _Lane, job: PollJob,
                              loop: asyncio.AbstractEventLoop) -> None:
        try:
            await self._poll_and_reschedule(lane, job, loop)
        finally:
            lane.in_flight -= 1
            if lane.slot_free is not None and not lane.slot_free.done():
                lane.slot_free.set_result(None)

    async def _poll_and_reschedule(self, lane: _Lane, job: PollJob,
                                   loop: asyncio.AbstractEventLoop) -> None:
        job.reading = True
        try:
            await self.poll_once(job)
        finally:
            job.reading = False
            if job.waiter is not None and not job.waiter.done():
                job.waiter.set_result(None)
        if cancel_requested():  # a library swallowed our cancel (3.11 wait_for)
            raise asyncio.CancelledError
        self.polls += 1
        now = loop.time()
        if job.interval_s <= 0:  # "as fast as possible" (benchmarks): let others run too
            job.due = now
            await asyncio.sleep(0)
        else:
            job.due += job.interval_s
            if job.due < now:  # overran whole slots: skip them, keep the phase
                missed = math.floor((now - job.due) / job.interval_s) + 1
                job.due += missed * job.interval_s
                self._skipped(lane, job, missed, now)
            elif lane.overrun_since is not None:
                lane.on_time += 1
                if lane.on_time >= self.on_time_polls:
                    log.info("%s: polls back on schedule after %.1f s (%d polls skipped)",
                             lane.key, now - lane.overrun_since, lane.overrun_skipped)
                    lane.overrun_since = None
        if job.active:
            self._push(lane, job)

    def _skipped(self, lane: _Lane, job: PollJob, missed: int, now: float) -> None:
        job.skipped += missed
        self.skipped += missed
        extra = job.io.stats.extra
        extra["polls_skipped"] = extra.get("polls_skipped", 0) + missed
        lane.on_time = 0
        if lane.overrun_since is None:
            lane.overrun_since = now
            lane.overrun_skipped = 0
            log.warning("%s: polls cannot keep their schedule: %s skipped %d slot(s) of "
                        "%g s; skipped polls are counted (polls_skipped) and logged again "
                        "when the endpoint is back on schedule", lane.key, job.io.device_id,
                        missed, job.interval_s)
        lane.overrun_skipped += missed

    # ---- metrics ---------------------------------------------------------------------

    def stats(self) -> dict[str, object]:
        """Polls, skipped slots, and over the recent polls: how late they started and how
        long a good read took (p50/p99/max, ms)."""
        out: dict[str, object] = {"polls": self.polls, "skipped": self.skipped,
                                  "endpoints": len(self._lanes),
                                  "overrunning": sorted(k for k, lane in self._lanes.items()
                                                        if lane.overrun_since is not None)}
        for name, samples in (("late_ms", self.lateness_ms), ("read_ms", self.latency_ms)):
            ordered = sorted(samples)
            for label, q in (("p50", 0.50), ("p99", 0.99)):
                out[f"{name}_{label}"] = (ordered[min(len(ordered) - 1, int(q * len(ordered)))]
                                          if ordered else None)
            out[f"{name}_max"] = ordered[-1] if ordered else None
        return out


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
