"""Safe setpoints on stop: each device's configured ``safe_setpoints``, written with a bound.

Called by the daemon after polling has stopped and before the links close. Devices that
never answered are skipped (nothing to talk to); devices are written in parallel, the
points of one device in config order; the whole step ends after ``bound_s`` whatever the
devices do, so a dead link never holds up the stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping

from drivers.base import DeviceIO, DriverError
from gateway.config.models import Device
from gateway.model import PointValue
from gateway.state import SiteState

log = logging.getLogger("autogrid.service")

SAFE_SETPOINTS_BOUND_S = 5.0


async def write_safe_setpoints(devices: Iterable[Device], ios: Mapping[str, DeviceIO],
                               state: SiteState, bound_s: float = SAFE_SETPOINTS_BOUND_S
                               ) -> dict[str, dict[str, str]]:
    """Write every configured safe setpoint of ``devices`` (this gateway's) through their
    handles; returns {device: {point: "ok"|error}}."""
    results: dict[str, dict[str, str]] = {}
    jobs = []
    for dev in devices:
        io = ios.get(dev.id)
        ds = state.devices.get(dev.id)
        if not dev.safe_setpoints or io is None:
            continue
        if ds is None or ds.health.last_ok is None:
            results[dev.id] = {p: "skipped: never answered" for p in dev.safe_setpoints}
            continue
        out = results.setdefault(dev.id, {p: "not written (time bound)"
                                          for p in dev.safe_setpoints})
        jobs.append(asyncio.ensure_future(_write_device(dev.id, io, dev.safe_setpoints, out)))
    if not jobs:
        return results
    _done, pending = await asyncio.wait(jobs, timeout=bound_s)
    if pending:
        from gateway.aio import cancel_and_wait

        await cancel_and_wait(list(pending))
        log.error("safe setpoints: not done within %.1f s; stopping anyway", bound_s)
    n_ok = sum(v == "ok" for r in results.values() for v in r.values())
    n = sum(len(r) for r in results.values())
    log.info("safe setpoints written: %d of %d", n_ok, n)
    return results


async def _write_device(device_id: str, io: DeviceIO, points: dict[str, float | bool],
                        out: dict[str, str]) -> None:
    for point, value in points.items():
        try:
            readback: PointValue | None = await io.write(point, value)
        except DriverError as exc:
            out[point] = f"failed: {exc}"
            log.error("%s: safe setpoint %s=%s failed: %s", device_id, point, value, exc)
            continue
        out[point] = "ok"
        log.info("%s: safe setpoint %s=%s (read back %s)", device_id, point, value, readback)
