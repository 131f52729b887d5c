"""SiteState: the latest reading of every point, its quality, and who wants to know.

The poller writes here; the historian, the API (and later protection and control) read or
subscribe. Quality is derived, never stored stale: a reading older than its device's max
age reads as STALE, a device whose last poll failed reads as OFFLINE.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.model import NATURES, DeviceHealth, Invalid, Nature, PointValue, Quality, Reading

ChangeListener = Callable[[str, dict[str, Reading]], None]
SampleListener = Callable[[str, dict[str, Reading]], None]  # device, every polled reading
HealthListener = Callable[[str, DeviceHealth], None]
PollListener = Callable[[str, bool, float | None], None]  # device, ok, latency_ms


@dataclass
class DeviceState:
    device_id: str
    nature: Nature
    max_age_s: float
    protocol: str = ""
    endpoint: str = ""
    role: str | None = None
    capacity_kwh: float | None = None
    readings: dict[str, Reading] = field(default_factory=dict)
    health: DeviceHealth = field(default_factory=DeviceHealth)
    invalid: dict[str, str] = field(default_factory=dict)  # point -> why it cannot be true

    def quality_at(self, reading: Reading, now: float) -> Quality:
        if self.health.quality is Quality.OFFLINE:
            return Quality.OFFLINE
        if now - reading.ts > self.max_age_s:
            return Quality.STALE
        return reading.quality

    def device_quality(self, now: float) -> Quality:
        if self.health.quality is Quality.OFFLINE or self.health.last_ok is None:
            return Quality.OFFLINE
        if now - self.health.last_ok > self.max_age_s:
            return Quality.STALE
        return Quality.GOOD

    def value(self, point: str, now: float | None = None, usable_only: bool = True
              ) -> PointValue | None:
        r = self.readings.get(point)
        if r is None:
            return None
        if usable_only and self.quality_at(r, time.time() if now is None else now) \
                is not Quality.GOOD:
            return None
        return r.value


class SiteState:
    """Latest readings of all devices of this gateway, with change notification."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceState] = {}
        # tuples, replaced on (un)subscribe: a listener that unsubscribes while being
        # called changes no sequence being walked, and an update copies nothing
        self._listeners: tuple[ChangeListener, ...] = ()
        self._sample_listeners: tuple[SampleListener, ...] = ()
        self._health_listeners: tuple[HealthListener, ...] = ()
        self._poll_listeners: tuple[PollListener, ...] = ()

    def add_device(self, dev: DeviceState) -> None:
        self.devices[dev.device_id] = dev

    def remove_device(self, device_id: str) -> None:
        self.devices.pop(device_id, None)

    def _subscribe(self, attr: str, listener: Any) -> Callable[[], None]:
        setattr(self, attr, (*getattr(self, attr), listener))

        def unsubscribe() -> None:
            now = getattr(self, attr)
            if listener in now:
                i = now.index(listener)
                setattr(self, attr, now[:i] + now[i + 1:])

        return unsubscribe

    def on_change(self, listener: ChangeListener) -> Callable[[], None]:
        """Call ``listener(device_id, changed)`` after every update; returns unsubscribe."""
        return self._subscribe("_listeners", listener)

    def on_sample(self, listener: SampleListener) -> Callable[[], None]:
        """Call ``listener(device_id, readings)`` after every successful poll with every
        point it read, changed or not (protection judges a held value by its duration)."""
        return self._subscribe("_sample_listeners", listener)

    def on_health(self, listener: HealthListener) -> Callable[[], None]:
        return self._subscribe("_health_listeners", listener)

    def on_poll(self, listener: PollListener) -> Callable[[], None]:
        """Call ``listener(device_id, ok, latency_ms)`` after every poll (metrics)."""
        return self._subscribe("_poll_listeners", listener)

    def update(self, device_id: str, values: Mapping[str, PointValue | Invalid | None],
               ts: float, latency_ms: float | None = None) -> dict[str, Reading]:
        """Store a successful poll. Returns (and announces) the readings that changed.

        A value the driver marked ``Invalid`` is stored with quality INVALID (its raw value
        kept for diagnostics) and never counts as a usable reading."""
        dev = self.devices[device_id]
        changed: dict[str, Reading] = {}
        readings, invalid, good = dev.readings, dev.invalid, Quality.GOOD
        for point, value in values.items():
            if isinstance(value, Invalid):
                raw, quality = value.raw, Quality.INVALID
                invalid[point] = value.why
            else:
                raw, quality = value, good
                if invalid:
                    invalid.pop(point, None)
            old = readings.get(point)
            if old is not None and old.quality is quality and old.value == raw:
                old.ts = ts
                continue
            spec = NATURES[dev.nature].get(point)
            reading = Reading(raw, spec.unit if spec else "", ts, quality)
            readings[point] = reading
            changed[point] = reading
        h = dev.health
        was = h.quality
        h.polls += 1
        h.consecutive_errors = 0
        h.last_error = None  # recovered: the old error is history, not the present
        h.last_ok = ts
        h.quality = Quality.GOOD
        h.latency_ms = latency_ms
        for poll_listener in self._poll_listeners:
            poll_listener(device_id, True, latency_ms)
        if was is not Quality.GOOD:
            for point, r in dev.readings.items():
                if r.quality is Quality.OFFLINE and point not in dev.invalid:
                    r.quality = Quality.GOOD
                    changed.setdefault(point, r)
            self._announce_health(device_id, h)
        if changed:
            for listener in self._listeners:
                listener(device_id, changed)
        if self._sample_listeners:
            sample = {p: dev.readings[p] for p in values if p in dev.readings}
            for sample_listener in self._sample_listeners:
                sample_listener(device_id, sample)
        return changed

    def fail(self, device_id: str, error: str, ts: float) -> bool:
        """Record a failed poll: the device and its readings go OFFLINE.

        Returns True when this is a change of state (first failure after good polls).
        """
        dev = self.devices[device_id]
        h = dev.health
        h.polls += 1
        h.errors += 1
        h.consecutive_errors += 1
        h.last_error = error
        for poll_listener in self._poll_listeners:
            poll_listener(device_id, False, None)
        first = h.quality is not Quality.OFFLINE or h.consecutive_errors == 1
        if h.quality is not Quality.OFFLINE:
            h.quality = Quality.OFFLINE
            changed = {}
            for point, r in dev.readings.items():
                r.quality = Quality.OFFLINE
                # Announced at the time of the failure; the stored reading keeps the time
                # of its last good read.
                changed[point] = Reading(r.value, r.unit, ts, Quality.OFFLINE)
            self._announce_health(device_id, h)
            if changed:
                for listener in self._listeners:
                    listener(device_id, changed)
        return first

    def _announce_health(self, device_id: str, health: DeviceHealth) -> None:
        for listener in self._health_listeners:
            listener(device_id, health)

    # -- views -------------------------------------------------------------------------

    def of_nature(self, *natures: Nature) -> Iterable[DeviceState]:
        return (d for d in self.devices.values() if d.nature in natures)

    def device_snapshot(self, device_id: str, now: float | None = None) -> dict[str, object]:
        now = time.time() if now is None else now
        dev = self.devices[device_id]
        h = dev.health
        return {
            "id": dev.device_id,
            "nature": str(dev.nature),
            "protocol": dev.protocol,
            "endpoint": dev.endpoint,
            "quality": str(dev.device_quality(now)),
            "last_ok": h.last_ok,
            "last_error": h.last_error,
            "polls": h.polls,
            "errors": h.errors,
            "latency_ms": h.latency_ms,
            "points": {p: {"value": r.value, "unit": r.unit, "ts": r.ts,
                           "quality": str(dev.quality_at(r, now)),
                           **({"invalid": dev.invalid[p]} if p in dev.invalid else {})}
                       for p, r in dev.readings.items()},
        }

    def snapshot(self, now: float | None = None) -> dict[str, object]:
        now = time.time() if now is None else now
        return {
            "ts": now,
            "summary": self.summary(now),
            "devices": {d: self.device_snapshot(d, now) for d in self.devices},
        }

    def summary(self, now: float | None = None) -> dict[str, object]:
        """Site power flow from good readings only (kW; grid + = import, battery + = discharge)."""
        now = time.time() if now is None else now

        def total(natures: tuple[Nature, ...], point: str = "p_kw") -> tuple[float | None, int]:
            s, n = 0.0, 0
            for d in self.of_nature(*natures):
                v = d.value(point, now)
                if isinstance(v, int | float) and not isinstance(v, bool):
                    s += float(v)
                    n += 1
            return (s if n else None), n

        meters = list(self.of_nature(Nature.METER))
        grid_meters = [m for m in meters if m.role == "grid"] or (
            meters if len(meters) == 1 and meters[0].role is None else [])
        grid = None
        for m in grid_meters:
            v = m.value("p_kw", now)
            if isinstance(v, int | float):
                grid = (grid or 0.0) + float(v)
        pv, _ = total((Nature.PV_INVERTER,))
        wind, _ = total((Nature.WIND_TURBINE,))
        batt, _ = total((Nature.BESS,))
        ev, _ = total((Nature.EVSE,))
        load = None
        if grid is not None:
            load = grid + (pv or 0.0) + (wind or 0.0) + (batt or 0.0) - (ev or 0.0)
        soc_num = soc_den = 0.0
        for b in self.of_nature(Nature.BESS):
            soc = b.value("soc_pct", now)
            if isinstance(soc, int | float):
                w = b.capacity_kwh or 1.0
                soc_num += float(soc) * w
                soc_den += w
        counts = {q: 0 for q in ("good", "stale", "offline")}
        for d in self.devices.values():
            counts[str(d.device_quality(now))] += 1
        return {
            "grid_kw": grid, "pv_kw": pv, "wind_kw": wind, "battery_kw": batt,
            "battery_soc_pct": (soc_num / soc_den) if soc_den else None,
            "ev_kw": ev, "load_kw": load,
            "devices": counts,
        }
