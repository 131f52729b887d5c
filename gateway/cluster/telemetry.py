"""Readings across gateways: each gateway publishes its devices' readings under a key
leased to its liveness (``telemetry/<gateway>``); every gateway folds the others' readings
into its SiteState with their original read times, so the usual staleness rules judge
them. When a gateway's lease expires its key goes, its devices go offline here, and an
alarm names the gateway and since when.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.cluster.store import Change, ClusterStore, Value
from gateway.model import NATURES, DeviceHealth, Quality, Reading
from gateway.state import DeviceState, SiteState

if TYPE_CHECKING:
    from gateway.alarms import AlarmStore
    from gateway.config.models import SiteConfig

log = logging.getLogger("autogrid.cluster.telemetry")
PUBLISH_MIN_S = 0.2  # coalesce: at most this often
PUBLISH_MAX_S = 1.0  # and at least this often while anything is polled


def snapshot(state: SiteState, devices: list[str]) -> Value:
    """The control-relevant readings of ``devices``: value, quality and read time."""
    out: dict[str, Any] = {}
    for dev_id in devices:
        dev = state.devices.get(dev_id)
        if dev is None:
            continue
        h = dev.health
        out[dev_id] = {"q": str(h.quality), "last_ok": h.last_ok, "err": h.last_error,
                       "points": {p: [r.value, str(r.quality), r.ts]
                                  for p, r in dev.readings.items()}}
    return {"devices": out}


def remote_device_state(cfg: SiteConfig, dev_id: str, gateway: str) -> DeviceState:
    """A device another gateway polls, as this gateway's SiteState holds it (offline until
    its first telemetry)."""
    dev = next(d for d in cfg.devices if d.id == dev_id)
    conn = cfg.connection(dev.connection)
    return DeviceState(device_id=dev.id, nature=dev.nature,
                       max_age_s=dev.max_age_s or max(3.0 * dev.poll_interval_s, 2.0),
                       protocol=conn.type, endpoint=f"via {gateway}", role=dev.role,
                       capacity_kwh=dev.ratings.capacity_kwh)


class Telemetry:
    def __init__(self, store: ClusterStore, state: SiteState, own: list[str],
                 remote: dict[str, str], alarms: AlarmStore | None) -> None:
        self.store = store
        self.state = state
        self.own = own  # devices this gateway polls (the component's list: kept current)
        self.own_set = set(own)
        self.remote = remote  # device -> the gateway that polls it
        self.alarms = alarms
        self.gone: dict[str, float] = {}  # gateway -> since when its lease is gone
        self.ages_s: list[float] = []  # age of remote readings when folded (for the bench)
        self.published = 0
        self.publish_errors = 0
        self._dirty = asyncio.Event()
        self._unsubs: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.own_set = set(self.own)
        self._unsubs = [
            self.state.on_sample(lambda d, _s: self._mark(d)),
            self.state.on_health(lambda d, _h: self._mark(d)),
            self.store.watch_prefix("telemetry/", self._on_change)]
        for gw in sorted(set(self.remote.values())):
            self.gone.setdefault(gw, time.time())  # unheard of yet: offline until heard
        self._task = asyncio.create_task(self._publish_loop(), name="cluster telemetry")

    def _mark(self, dev_id: str) -> None:
        if dev_id in self.own_set:
            self._dirty.set()

    async def stop(self) -> None:
        for unsub in self._unsubs:
            unsub()
        self._unsubs = []
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _publish_loop(self) -> None:
        failures = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), PUBLISH_MAX_S)
            self._dirty.clear()
            try:
                await self.store.publish(f"telemetry/{self.store.gateway}",
                                         {"at": time.time(), **snapshot(self.state, self.own)})
                self.published += 1
                failures = 0
            except Exception as exc:  # the store is away: keep polling, try again
                self.publish_errors += 1
                failures += 1
                if failures == 1:
                    log.warning("publishing telemetry failed: %s", exc)
            await asyncio.sleep(PUBLISH_MIN_S)

    # -- folding the others' readings --------------------------------------------------------
    def _on_change(self, ch: Change) -> None:
        gw = ch.key.removeprefix("telemetry/")
        if gw == self.store.gateway:
            return
        if ch.value is None:
            self._gateway_lost(gw)
            return
        if gw in self.gone:
            since = self.gone.pop(gw)
            if self.alarms is not None and self.alarms.clear("cluster", f"gateway:{gw}"):
                log.info("gateway %s is back (gone since %s)", gw,
                         time.strftime("%H:%M:%S", time.localtime(since)))
        now = time.time()
        for dev_id, d in (ch.value.get("devices") or {}).items():
            if self.remote.get(dev_id) == gw:
                self._fold(dev_id, d, now)

    def _fold(self, dev_id: str, d: dict[str, Any], now: float) -> None:
        dev = self.state.devices.get(dev_id)
        if dev is None or not isinstance(d, dict):
            return
        specs = NATURES[dev.nature]
        for point, item in (d.get("points") or {}).items():
            try:
                value, quality, ts = item
                q = Quality(quality)
                ts = float(ts)
            except (TypeError, ValueError):
                continue  # a malformed entry from a peer is skipped, not trusted
            spec = specs.get(point)
            dev.readings[point] = Reading(value, spec.unit if spec else "", ts, q)
            self.ages_s.append(now - ts)
        del self.ages_s[:-10_000]
        self._health(dev, d.get("q"), d.get("last_ok"), d.get("err"))

    @staticmethod
    def _health(dev: DeviceState, quality: object, last_ok: object, err: object) -> None:
        h: DeviceHealth = dev.health
        try:
            h.quality = Quality(str(quality))
        except ValueError:
            h.quality = Quality.OFFLINE
        h.last_ok = float(last_ok) if isinstance(last_ok, int | float) else None
        h.last_error = str(err) if err is not None else None

    def _gateway_lost(self, gw: str) -> None:
        """Its lease ended (expired, or revoked as it stopped): its devices go offline
        here, an alarm says which gateway and since when."""
        since = time.time()
        self.gone.setdefault(gw, since)
        devices = sorted(d for d, g in self.remote.items() if g == gw)
        for dev_id in devices:
            dev = self.state.devices.get(dev_id)
            if dev is None:
                continue
            dev.health.quality = Quality.OFFLINE
            dev.health.last_error = f"gateway {gw} gone"
            for r in dev.readings.values():
                r.quality = Quality.OFFLINE
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.gone[gw]))
        log.warning("gateway %s gone since %s (its cluster lease ended): %s offline", gw, when,
                    ", ".join(devices) or "no devices")
        if self.alarms is not None:
            self.alarms.raise_("cluster", f"gateway:{gw}", "critical",
                               f"gateway {gw} gone since {when} (its cluster lease ended: "
                               f"it stopped, or was silent past the lease): "
                               f"its devices {', '.join(devices) or '(none)'} are offline "
                               f"and dispatched without")
