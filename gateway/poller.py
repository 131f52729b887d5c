"""The poller: one task per device, each on its own interval.

Devices behind one endpoint are serialised by the driver's endpoint lock; devices on
different endpoints are polled in parallel. A failed read marks the device offline at
once (so it shows within one poll period plus the timeout) and is logged once; the
recovery is logged once too. Nothing a device does can end the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from drivers.base import DeviceIO, DriverError
from gateway.aio import cancel_and_wait, cancel_requested
from gateway.state import SiteState

log = logging.getLogger("autogrid.poller")


@dataclass
class PollJob:
    io: DeviceIO
    interval_s: float
    task: asyncio.Task[None] | None = None


class Poller:
    def __init__(self, state: SiteState) -> None:
        self.state = state
        self.jobs: dict[str, PollJob] = {}

    def add(self, io: DeviceIO, interval_s: float) -> None:
        if io.device_id in self.jobs:
            raise ValueError(f"device '{io.device_id}' is already polled")
        job = PollJob(io, interval_s)
        self.jobs[io.device_id] = job
        job.task = asyncio.create_task(self._run(job), name=f"poll {io.device_id}")

    async def remove(self, device_id: str) -> None:
        job = self.jobs.pop(device_id, None)
        if job and job.task:
            await cancel_and_wait([job.task])

    async def stop(self) -> None:
        await cancel_and_wait([j.task for j in self.jobs.values() if j.task])
        self.jobs.clear()

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

    async def _run(self, job: PollJob) -> None:
        loop = asyncio.get_running_loop()
        next_due = loop.time()
        while True:
            await self.poll_once(job)
            if cancel_requested():  # a library swallowed our cancel (3.11 wait_for)
                raise asyncio.CancelledError
            next_due += job.interval_s
            now = loop.time()
            if next_due < now:  # overran (slow device): skip missed slots, keep the phase
                if job.interval_s > 0:
                    next_due += (int((now - next_due) // job.interval_s) + 1) * job.interval_s
                else:  # "as fast as possible" (benchmarks): just yield to the loop
                    next_due = now
            await asyncio.sleep(next_due - now)
