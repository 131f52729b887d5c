"""The poller: one task per endpoint, walking that endpoint's devices on a schedule.

Each endpoint's devices of one interval form a poll group: they are read one after the
other at the group's phase inside the interval and published to SiteState together, so
control never combines a meter read after the chargers moved with charger powers read
before (the grid meter is read last). The phase comes from a stable hash of the endpoint,
so the hundreds of endpoints of a large site are spread over the second instead of all
firing at the same instant. An endpoint whose link carries several requests at once
(``io.pipeline_window`` > 1, Modbus TCP ``max_in_flight``) has that many device reads in
flight instead. Endpoints are polled in parallel.

A poll that starts after its slot is late (kept as a metric); a device whose read overran
whole slots skips them (counted in ``polls_skipped``, logged once per episode per
endpoint, and again when the endpoint is back on schedule). A failed read marks the device
offline at once and is logged once; the recovery is logged once too. Nothing a device does
can end the daemon.
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


def phase_of(key: str, interval_s: float, slot_s: float = 0.0) -> float:
    """Where in the interval a poll group (an endpoint) is polled: the same on every
    restart and machine, spread evenly over the interval across keys, and on a grid of
    ``slot_s`` when one is given (0: anywhere)."""
    if interval_s <= 0:
        return 0.0
    phase = (zlib.crc32(key.encode()) / 2**32) * interval_s
    if 0 < slot_s < interval_s:
        slots = max(1, math.floor(interval_s / slot_s))  # whole slots in the interval
        phase = (math.floor(phase / slot_s) % slots) * slot_s
    return phase


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
    grid: bool | None = None  # the site's grid meter (read last in its round), once known


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
    """``slot_s``: the endpoints' phases are put on a grid of this many seconds, so the
    endpoints that fall in one slot are polled in the same loop passes: their timers
    fire together, their requests go out and their answers come back in shared passes,
    each with one epoll call instead of one per endpoint. 0 puts each endpoint at its
    own phase."""

    def __init__(self, state: SiteState, on_time_polls: int = ON_TIME_POLLS,
                 slot_s: float = 0.0) -> None:
        self.state = state
        self.on_time_polls = on_time_polls
        self.slot_s = slot_s
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
            # the next loop time that is the phase plus a whole number of intervals: the
            # same instant for every endpoint of one slot and interval, whenever added
            phase = phase_of(io.endpoint, interval_s, self.slot_s)
            job.due = phase + math.ceil((now - phase) / interval_s) * interval_s
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
        return self._publish(job, await self._read(job))

    async def _read(self, job: PollJob) -> tuple[float, object, float]:
        """(latency ms, values, wall time the values were read) of a good read, or (-1,
        error text, time) of a failed one. The time is taken when this device's read ends,
        not when its round is published: control compares a reading's time with when its
        setpoints were taken, and a reading stamped later than it was read would seem to
        show a setpoint written after it (a charger counted at its old power)."""
        io = job.io
        t0 = time.perf_counter()
        try:
            values = await io.read()
        except DriverError as exc:
            return -1.0, str(exc) or type(exc).__name__, time.time()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a driver bug must not end the daemon
            log.exception("%s: unexpected error from driver", io.device_id)
            return -1.0, f"internal error: {type(exc).__name__}: {exc}", time.time()
        return (time.perf_counter() - t0) * 1000.0, values, time.time()

    async def _read_round(self, jobs: list[PollJob]) -> list[tuple[float, object, float]]:
        """The reads of a round's first devices, read in one go by their driver when all
        of them share a ``read_round`` (as ``_read`` gives them); the rest are read one
        at a time."""
        reader = jobs[0].io.read_round
        if reader is None or any(job.io.read_round is not reader for job in jobs):
            return []
        try:
            done = await reader([job.io for job in jobs])
        except asyncio.CancelledError:
            raise
        except Exception:  # a driver bug: each device's own read reports it
            log.exception("%s: unexpected error from driver reading a round", jobs[0].io.endpoint)
            return []
        return [(-1.0, str(payload) or type(payload).__name__, ts)
                if isinstance(payload, DriverError) else (latency_ms, payload, ts)
                for latency_ms, payload, ts in done]

    def _publish(self, job: PollJob, result: tuple[float, object, float]) -> bool:
        latency_ms, payload, read_ts = result
        device_id = job.io.device_id
        if device_id not in self.state.devices:
            return False  # removed while it was read
        if latency_ms < 0:
            self._failed(device_id, str(payload))
            return False
        self.latency_ms.append(latency_ms)
        health = self.state.devices[device_id].health
        if health.consecutive_errors:
            log.info("%s: recovered after %d failed polls", device_id,
                     health.consecutive_errors)
        self.state.update(device_id, payload, read_ts, latency_ms)  # type: ignore[arg-type]
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
                await self._round(lane, job, now, loop)
                continue
            while lane.in_flight >= lane.window:
                lane.slot_free = loop.create_future()
                await lane.slot_free
            lane.in_flight += 1
            child = loop.create_task(self._poll_in_window(lane, job, loop),
                                     name=f"poll {job.io.device_id}")
            lane.children.add(child)
            child.add_done_callback(lane.children.discard)

    async def _round(self, lane: _Lane, first: PollJob, now: float,
                     loop: asyncio.AbstractEventLoop) -> None:
        """Read every device of the lane that is due, one after the other, then publish
        them together: control then never sees half a round (a meter read after the
        chargers' setpoints moved next to charger powers read before)."""
        jobs = [first]
        heap = lane.heap
        while heap and heap[0][0] <= now:
            _, _, job = heapq.heappop(heap)
            if job.active:
                if job.interval_s > 0:
                    self.lateness_ms.append((now - job.due) * 1000.0)
                jobs.append(job)
        if len(jobs) > 1:  # the grid meter last: its import then includes what the
            jobs.sort(key=self._grid_last)  # others' readings show (control nets them)
        results: list[tuple[float, object, float]] = []
        try:
            for job in jobs:
                job.reading = True
            if len(jobs) > 1:
                results = await self._read_round(jobs)
            for job in jobs[len(results):]:
                results.append(await self._read(job))
        finally:
            for job in jobs:
                job.reading = False
                if job.waiter is not None and not job.waiter.done():
                    job.waiter.set_result(None)
        for job, result in zip(jobs, results, strict=True):
            if job.active:
                self._publish(job, result)
        if cancel_requested():  # a library swallowed our cancel (3.11 wait_for)
            raise asyncio.CancelledError
        flat_out = False
        for job in jobs:
            self._reschedule(lane, job, loop)
            flat_out = flat_out or job.interval_s <= 0
        if flat_out:  # "as fast as possible" (benchmarks): let others run, once a round
            await asyncio.sleep(0)

    def _grid_last(self, job: PollJob) -> bool:
        if job.grid is None:
            dev = self.state.devices.get(job.io.device_id)
            if dev is None:
                return False
            job.grid = dev.role == "grid"
        return job.grid

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
        self._reschedule(lane, job, loop)
        if job.interval_s <= 0:  # "as fast as possible" (benchmarks): let others run too
            await asyncio.sleep(0)

    def _reschedule(self, lane: _Lane, job: PollJob, loop: asyncio.AbstractEventLoop) -> None:
        self.polls += 1
        now = loop.time()
        if job.interval_s <= 0:
            job.due = now
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
