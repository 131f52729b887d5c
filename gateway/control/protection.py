"""Local protection: runs on every sample (a SiteState ``on_sample`` listener: every poll,
changed or not, so a value held constant past a rule's delay trips, and a healthy value
held constant releases), never waits on the network or on the controller's cycle. A rule
that holds for its delay acts at once:
zero the device (and lock it out of control until it is fine again), trip a breaker,
island the site on loss of grid, and raise an alarm. Stale critical readings are checked
by a light timer. The time from the offending sample to the command is recorded.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gateway.config.models import SiteConfig
from gateway.control.alarms import ControlStore
from gateway.control.config import Protection as ProtectionCfg
from gateway.model import Nature, PointValue, Quality, Reading
from gateway.state import DeviceState, SiteState

Write = Callable[[str, str, PointValue], object]  # device, point, value: issue, don't wait
ZERO_POINT = {Nature.BESS: ("p_set_kw", 0.0), Nature.EVSE: ("p_set_kw", 0.0),
              Nature.PV_INVERTER: ("p_limit_pct", 0.0)}


@dataclass(frozen=True)
class Rule:
    name: str  # condition name, part of the alarm key
    nature: Nature
    point: str
    op: str  # ">" or "<"
    limit: float
    delay_s: float
    action: str  # "zero" (the device), "zero_chargers", "grid_loss", "alarm"
    severity: str = "critical"
    only: str | None = None  # restrict to one device id
    target: str | None = None  # the device to zero ("zero" action; default: by nature)

    def violated(self, value: float) -> bool:
        return value > self.limit if self.op == ">" else value < self.limit


def rules_for(cfg: SiteConfig, p: ProtectionCfg) -> list[Rule]:
    g = cfg.site.grid
    out: list[Rule] = []
    meters = [d for d in cfg.devices if d.nature is Nature.METER]
    pcc = [m.id for m in meters if m.role == "grid"] or (
        [meters[0].id] if len(meters) == 1 and meters[0].role is None else [])
    for mid in pcc:
        out += [
            Rule("over_voltage", Nature.METER, "v_v", ">", g.nominal_v * (1 + p.over_voltage_pct
                                                                          / 100),
                 p.voltage_delay_s, "grid_loss", only=mid),
            Rule("under_voltage", Nature.METER, "v_v", "<",
                 g.nominal_v * (1 - p.under_voltage_pct / 100), p.voltage_delay_s, "grid_loss",
                 only=mid),
            Rule("over_frequency", Nature.METER, "f_hz", ">", g.nominal_f_hz + p.over_frequency_hz,
                 p.frequency_delay_s, "grid_loss", only=mid),
            Rule("under_frequency", Nature.METER, "f_hz", "<",
                 g.nominal_f_hz - p.under_frequency_hz, p.frequency_delay_s, "grid_loss",
                 only=mid)]
    for d in cfg.devices:
        imax = d.ratings.i_max_a
        if imax is None:
            continue
        lim = imax * p.over_current_pct / 100
        if d.nature is Nature.METER:
            out += [Rule(f"over_current_{ph}", Nature.METER, f"i_{ph}_a", ">", lim,
                         p.current_delay_s, "zero_chargers", only=d.id)
                    for ph in ("l1", "l2", "l3")]
        elif d.nature is Nature.BREAKER:
            out.append(Rule("over_current", Nature.BREAKER, "i_a", ">", lim, p.current_delay_s,
                            "zero_chargers", only=d.id))
    for nat in (Nature.BESS, Nature.BMS):
        out += [Rule("cell_over_temperature", nat, "cell_temp_max_c", ">", p.cell_temp_max_c,
                     p.battery_delay_s, "zero"),
                Rule("cell_over_voltage", nat, "cell_v_max_v", ">", p.cell_v_max_v,
                     p.battery_delay_s, "zero"),
                Rule("cell_under_voltage", nat, "cell_v_min_v", "<", p.cell_v_min_v,
                     p.battery_delay_s, "zero")]
    return out


class Protection:
    def __init__(self, cfg: SiteConfig, p: ProtectionCfg, state: SiteState,
                 store: ControlStore, write: Write, lockouts: dict[str, str],
                 on_grid_loss: Callable[[str], str | None] | None = None,
                 derates: dict[str, float] | None = None) -> None:
        self.cfg = cfg
        self.p = p
        self.state = state
        self.store = store
        self.write = write
        self.lockouts = lockouts
        self.derates = derates if derates is not None else {}  # battery -> fraction
        self.lost: dict[str, str | None] = {}  # silent/invalid BMS -> the battery it guards
        self.on_grid_loss = on_grid_loss
        self.rules: dict[tuple[Nature, str], list[Rule]] = {}
        self.since: dict[tuple[str, str], float] = {}  # (device, rule) -> first violation
        self.fine_since: dict[str, float] = {}
        self.active: dict[tuple[str, str], Rule] = {}
        self.latencies_ms: deque[float] = deque(maxlen=10_000)
        self.trips = 0
        self._unsub: Callable[[], None] | None = None
        self.critical: list[str] = []
        self.rebind(cfg)

    def rebind(self, cfg: SiteConfig) -> None:
        """(Re)build the rules and the watched devices from ``cfg`` (start, reload);
        a removed device's timers and alarms go with it."""
        self.cfg = cfg
        self.rules = {}
        for r in rules_for(cfg, self.p):
            self.rules.setdefault((r.nature, r.point), []).append(r)
        bess = [d.id for d in cfg.devices if d.nature is Nature.BESS]
        meters = [d.id for d in cfg.devices if d.nature is Nature.METER]
        bms = [d.id for d in cfg.devices if d.nature is Nature.BMS]
        # every BMS is watched: an inverter without its BMS's word must not run on
        self.critical = list(dict.fromkeys((self.p.critical or (meters[:1] + bess)) + bms))
        ids = {d.id for d in cfg.devices}
        for key in [k for k in self.since if k[0] not in ids]:
            del self.since[key]
        for key in [k for k in self.active if k[0] not in ids]:
            del self.active[key]
            self.store.clear(key[0], key[1])
        for dev_id in [d for d in self.lockouts if d not in ids]:
            del self.lockouts[dev_id]

    def attach(self) -> None:
        self._unsub = self.state.on_sample(self.on_sample)

    def detach(self) -> None:
        if self._unsub is not None:
            self._unsub()
            self._unsub = None

    # -- every sample -------------------------------------------------------------------------
    def on_sample(self, device_id: str, sample: dict[str, Reading]) -> None:
        """Judge every reading of one poll against the rules on its point."""
        dev = self.state.devices.get(device_id)
        if dev is None or not self.p.enabled:
            return
        for point, reading in sample.items():
            rules = self.rules.get((dev.nature, point))
            if not rules:
                continue
            v = reading.value
            ok = reading.quality is Quality.GOOD and isinstance(v, int | float) \
                and not isinstance(v, bool)
            for rule in rules:
                if rule.only is not None and rule.only != device_id:
                    continue
                key = (device_id, rule.name)
                if ok and rule.violated(float(v)):  # type: ignore[arg-type]
                    self.fine_since.pop(f"{device_id}:{rule.name}", None)
                    first = self.since.setdefault(key, reading.ts)
                    if key not in self.active and reading.ts - first >= rule.delay_s:
                        self._trip(device_id, rule, float(v), reading.ts)  # type: ignore[arg-type]
                elif ok:
                    self.since.pop(key, None)
                    if key in self.active:
                        self._fine(device_id, rule, reading.ts)

    def _trip(self, device_id: str, rule: Rule, value: float, sample_ts: float) -> None:
        self.active[(device_id, rule.name)] = rule
        msg = (f"{rule.name.replace('_', ' ')}: {rule.point} = {value:.3g} "
               f"({rule.op} {rule.limit:.4g})")
        targets = self._targets(device_id, rule)
        for t in targets:
            nature = self.state.devices[t].nature
            point, zero = ZERO_POINT[nature]
            self.lockouts[t] = msg
            self.write(t, point, zero)
        done: str | None = None
        if rule.action == "grid_loss" and self.on_grid_loss is not None:
            done = self.on_grid_loss(msg)
        self.latencies_ms.append((time.time() - sample_ts) * 1000.0)
        self.trips += 1
        zeroed = "zero sent to " + ", ".join(targets) if targets else "no device to zero"
        if rule.action == "zero" and rule.nature is Nature.BMS and not targets:
            zeroed = (f"no battery zeroed: {device_id} guards none "
                      f"(control.protection.bms_guards)")
        action = {"zero": zeroed, "zero_chargers": zeroed,
                  "grid_loss": done or "grid loss: alarm only (no control attached)",
                  "alarm": "alarm only"}[rule.action]
        self.store.raise_(device_id, rule.name, rule.severity, f"{msg}: {action}")

    def _fine(self, device_id: str, rule: Rule, ts: float) -> None:
        key = (device_id, rule.name)
        first = self.fine_since.setdefault(f"{device_id}:{rule.name}", ts)
        if ts - first < self.p.reset_after_s:
            return
        self.fine_since.pop(f"{device_id}:{rule.name}", None)
        del self.active[key]
        self.store.clear(device_id, rule.name)
        still = {t for (d, _), r in self.active.items() for t in self._targets(d, r)}
        still |= {b for b in self.lost.values() if b is not None}
        for t in list(self.lockouts):
            if t not in still and t in self._targets(device_id, rule):
                del self.lockouts[t]

    def _targets(self, device_id: str, rule: Rule) -> list[str]:
        if rule.target is not None:
            return [rule.target]
        if rule.action == "zero":
            if rule.nature is Nature.BESS:
                return [device_id]
            bat = self.p.bms_guards.get(device_id)  # a BMS acts on its own battery only
            return [bat] if bat is not None and bat in self.state.devices else []
        if rule.action == "zero_chargers":
            return [d.device_id for d in self.state.of_nature(Nature.EVSE)]
        return []

    # -- timer ----------------------------------------------------------------------------------
    def check_stale(self, now: float | None = None) -> list[str]:
        """Raise (or clear) a 'stale' alarm for each critical device; returns stale ids."""
        now = time.time() if now is None else now
        stale = []
        for dev_id in self.critical:
            dev = self.state.devices.get(dev_id)
            if dev is None:
                continue
            limit = self.p.stale_after_s or dev.max_age_s
            last = dev.health.last_ok
            if dev.nature is Nature.BMS:
                self._watch_bms(dev_id, now, limit)
            if last is None or now - last > limit or dev.health.quality is Quality.OFFLINE:
                stale.append(dev_id)
                if not self.store.is_active(dev_id, "stale"):
                    self.store.raise_(dev_id, "stale", "warning",
                                      f"no fresh reading for more than {limit:.1f} s: "
                                      f"planned around")
            elif dev.invalid:  # fresh, but a reading cannot be true: as good as none
                stale.append(dev_id)
                self.store.raise_(dev_id, "stale", "warning",
                                  f"readings that cannot be true ({_invalid_text(dev)}): "
                                  f"planned around")
            elif self.store.is_active(dev_id, "stale"):
                self.store.clear(dev_id, "stale")
        self._check_invalid()
        return stale

    def _check_invalid(self) -> None:
        """Every device with a reading that cannot be true (out of range, a vendor's
        not-available pattern) has an 'invalid' alarm naming the points, cleared when its
        readings are valid again. Control never uses those readings."""
        for dev_id, dev in self.state.devices.items():
            if dev.invalid:
                self.store.raise_(dev_id, "invalid", "warning",
                                  f"readings that cannot be true, not used: "
                                  f"{_invalid_text(dev)}")
            elif self.store.is_active(dev_id, "invalid"):
                self.store.clear(dev_id, "invalid")

    def _watch_bms(self, bms: str, now: float, limit: float) -> None:
        """A BMS silent past its max age, or whose cell readings cannot be true, is lost:
        its battery is zeroed (or derated), as an inverter does without its BMS; released
        once the BMS is fresh and valid again."""
        dev = self.state.devices[bms]
        last = dev.health.last_ok
        bad = sorted(p for p in dev.invalid if p.startswith("cell_"))
        why = None
        if last is None or now - last > limit or dev.health.quality is Quality.OFFLINE:
            why = f"no fresh reading for more than {limit:.1f} s"
        elif bad:
            why = "invalid " + ", ".join(f"{p} ({dev.invalid[p]})" for p in bad)
        bat = self.p.bms_guards.get(bms)
        bat = bat if bat is not None and bat in self.state.devices else None
        if why is not None:
            if bms in self.lost:
                return
            self.lost[bms] = bat
            if bat is None:
                done = "no battery linked (control.protection.bms_guards): none zeroed"
            elif self.p.bms_loss_action == "derate":
                self.derates[bat] = self.p.bms_loss_derate_pct / 100.0
                done = f"{bat} derated to {self.p.bms_loss_derate_pct:g} % of its ratings"
            else:
                self.lockouts[bat] = f"{bms} lost: {why}"
                nature = self.state.devices[bat].nature
                point, zero = ZERO_POINT[nature]
                self.write(bat, point, zero)
                done = f"zero sent to {bat}"
            self.store.raise_(bms, "lost", "critical", f"BMS lost: {why}: {done}")
            return
        if bms not in self.lost:
            return
        bat = self.lost.pop(bms)
        if bat is not None:
            self.derates.pop(bat, None)
            still = {t for (d, _), r in self.active.items() for t in self._targets(d, r)}
            if bat not in still and bat not in self.lost.values():
                self.lockouts.pop(bat, None)
        self.store.clear(bms, "lost")

    def status(self) -> dict[str, object]:
        lat = sorted(self.latencies_ms)
        return {"enabled": self.p.enabled, "trips": self.trips,
                "active": [{"device": d, "rule": r} for d, r in self.active],
                "lockouts": dict(self.lockouts), "derates": dict(self.derates),
                "bms_lost": dict(self.lost),
                "latency_ms_p50": lat[len(lat) // 2] if lat else None,
                "latency_ms_max": lat[-1] if lat else None}


def _invalid_text(dev: DeviceState) -> str:
    parts = []
    for point, why in sorted(dev.invalid.items())[:4]:
        r = dev.readings.get(point)
        parts.append(f"{point} = {r.value!r} ({why})" if r is not None else f"{point} ({why})")
    more = len(dev.invalid) - len(parts)
    return "; ".join(parts) + (f"; {more} more" if more > 0 else "")

