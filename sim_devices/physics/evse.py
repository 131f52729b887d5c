"""EV charger with vehicle sessions: arrival, departure, wanted energy, EV SOC, V2G.

Sessions come from the config (once, or daily "HH:MM") or from a seeded generator, one
local day at a time. The vehicle's own limits apply (taper above 80 % SOC, no discharge
for a car that is not V2G-capable, its BMS floor of 10 % SOC).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from gateway.model import Nature, PointValue
from sim_devices.physics.base import AcBus, SimModel, clamp
from sim_devices.settings import EvseSim, EvSession, RandomSessions, parse_hhmm

EV_DEFAULT_P_MAX_KW = 11.0  # typical on-board charger, AC three-phase
EV_SOC_FLOOR_PCT = 10.0  # the car refuses V2G discharge below this
TAPER_FROM_PCT = 80.0


@dataclass
class Session:
    """A vehicle visit, as it happens."""

    arrival_s: float
    departure_s: float
    energy_kwh: float  # wanted
    capacity_kwh: float
    soc_pct: float
    v2g: bool
    p_max_kw: float
    delivered_kwh: float = 0.0  # net energy into the car (V2G subtracts)

    @property
    def wants_kwh(self) -> float:
        return max(0.0, self.energy_kwh - self.delivered_kwh)


class Evse(SimModel):
    """An EV charger; p + = charging the EV, - = V2G discharge."""

    nature = Nature.EVSE

    def __init__(self, device_id: str, bus: AcBus, p_max_kw: float, timezone: str,
                 seed: int = 0, sim: EvseSim | None = None) -> None:
        sim = sim or EvseSim()
        super().__init__(device_id, bus, sim.watchdog_s)
        self.sim = sim
        self.p_max_kw = p_max_kw
        self.tz = ZoneInfo(timezone)
        self.seed = seed
        self.v2g_capable = sim.v2g_capable
        self.default_p_kw = min(sim.default_p_kw if sim.default_p_kw is not None else p_max_kw,
                                p_max_kw)
        self.fallback_p_kw = min(sim.fallback_p_kw if sim.fallback_p_kw is not None
                                 else min(self.default_p_kw, safe_p_kw(sim, bus)), p_max_kw)
        self.p_set_kw = self.default_p_kw
        self.enabled = True
        self.p_kw = 0.0
        self.e_total_kwh = 0.0
        self.e_session_kwh = 0.0
        self.car: Session | None = None
        self.now_s = 0.0  # physics time of the last step
        self.completed: list[Session] = []  # departed sessions, oldest first
        self._planned: list[Session] = []
        self._days_done: set[date] = set()
        for s in sim.sessions:
            if not s.daily():
                self._planned.append(self._session(_epoch(s.arrival), _epoch(s.departure), s))
        self._planned.sort(key=lambda s: s.arrival_s)

    # --- session planning ----------------------------------------------------------------
    def _session(self, arr: float, dep: float, s: EvSession) -> Session:
        return Session(arr, dep, s.energy_kwh, s.capacity_kwh, s.initial_soc_pct, s.v2g,
                       s.p_max_kw or EV_DEFAULT_P_MAX_KW)

    def _plan_day(self, day: date) -> None:
        if day in self._days_done:
            return
        self._days_done.add(day)
        midnight = datetime(day.year, day.month, day.day, tzinfo=self.tz)
        new: list[Session] = []
        for s in self.sim.sessions:
            if s.daily():
                assert isinstance(s.arrival, str) and isinstance(s.departure, str)
                a, d = parse_hhmm(s.arrival), parse_hhmm(s.departure)
                arr = midnight.replace(hour=a.hour, minute=a.minute)
                dep = midnight.replace(hour=d.hour, minute=d.minute)
                if dep <= arr:
                    dep += timedelta(days=1)
                new.append(self._session(arr.timestamp(), dep.timestamp(), s))
        if self.sim.random_sessions is not None:
            new.extend(self._random_day(midnight, self.sim.random_sessions))
        self._planned.extend(new)
        self._planned.sort(key=lambda s: s.arrival_s)

    def _random_day(self, midnight: datetime, r: RandomSessions) -> list[Session]:
        key = zlib.crc32(self.device_id.encode())
        rng = np.random.default_rng([self.seed, key, midnight.toordinal()])
        out: list[Session] = []
        for _ in range(int(rng.poisson(r.per_day))):
            arr_h = clamp(float(rng.normal(r.arrival_mean_h, r.arrival_std_h)), 0.0, 23.9)
            dwell_h = max(0.5, float(rng.normal(r.dwell_mean_h, 0.3 * r.dwell_mean_h)))
            energy = clamp(float(rng.normal(r.energy_mean_kwh, 0.4 * r.energy_mean_kwh)),
                           1.0, 0.9 * r.capacity_kwh)
            soc0 = min(float(rng.uniform(10.0, 60.0)), 100.0 - energy / r.capacity_kwh * 100.0)
            arr = midnight.timestamp() + arr_h * 3600.0
            out.append(Session(arr, arr + dwell_h * 3600.0, energy, r.capacity_kwh, soc0,
                               bool(rng.random() < r.v2g_share), EV_DEFAULT_P_MAX_KW))
        return out

    # --- physics -------------------------------------------------------------------------
    def step(self, now_s: float, dt_s: float) -> None:
        self.now_s = now_s
        t0 = now_s - dt_s
        today = datetime.fromtimestamp(now_s, self.tz).date()
        if not self._days_done:
            self._plan_day(today - timedelta(days=1))
        self._plan_day(today)
        t = t0
        energy = 0.0
        while t < now_s:
            if self.car is None:
                self._arrive(t, now_s)
                if self.car is None:
                    break
                t = max(t, self.car.arrival_s)
            end = min(now_s, self.car.departure_s)
            energy += self._charge(self.car, end - t)
            t = end
            if t >= self.car.departure_s:
                self._depart()
        self.p_kw = energy * 3600.0 / dt_s if dt_s > 0 else 0.0
        if self.car is None:
            self.p_kw = 0.0

    def _arrive(self, t: float, now_s: float) -> None:
        while self._planned and self._planned[0].arrival_s < now_s:
            s = self._planned.pop(0)
            if s.departure_s > t:  # still here at some point of this step
                self.car = s
                self.e_session_kwh = 0.0
                return

    def _depart(self) -> None:
        assert self.car is not None
        self.completed.append(self.car)
        self.car = None

    def _car_limits(self, car: Session) -> tuple[float, float]:
        """(max charge kW, max discharge kW) the car and charger allow now."""
        taper = clamp((100.0 - car.soc_pct) / (100.0 - TAPER_FROM_PCT), 0.05, 1.0)
        up = 0.0 if car.wants_kwh <= 1e-9 or car.soc_pct >= 100.0 else min(
            car.p_max_kw * taper, self.p_max_kw)
        down = (min(car.p_max_kw, self.p_max_kw)
                if self.v2g_capable and car.v2g and car.soc_pct > EV_SOC_FLOOR_PCT else 0.0)
        return up, down

    def _charge(self, car: Session, dt: float) -> float:
        """Charge (or discharge) the car for dt seconds; returns AC kWh into the car."""
        if dt <= 0:
            return 0.0
        h = dt / 3600.0
        up, down = self._car_limits(car)
        target = self.p_set_kw if self.enabled and self.bus.energized else 0.0
        p = clamp(target, -down, up)
        if p > 0:
            p = min(p, car.wants_kwh / h, (100.0 - car.soc_pct) / 100.0 * car.capacity_kwh / h)
        elif p < 0:
            p = max(p, -(car.soc_pct - EV_SOC_FLOOR_PCT) / 100.0 * car.capacity_kwh / h)
        e = p * h
        car.soc_pct = clamp(car.soc_pct + e / car.capacity_kwh * 100.0, 0.0, 100.0)
        car.delivered_kwh += e
        self.e_session_kwh = car.delivered_kwh
        if e > 0:
            self.e_total_kwh += e
        return e

    # --- points --------------------------------------------------------------------------
    def iec_state(self) -> str:
        """IEC 61851-1: A unplugged, B plugged (not charging), C charging."""
        if self.car is None:
            return "A"
        return "C" if abs(self.p_kw) > 1e-6 else "B"

    def consumption_kw(self) -> float:
        return self.p_kw

    def read_points(self) -> dict[str, PointValue]:
        car = self.car
        return {"state": self.iec_state(), "connected": car is not None, "p_kw": self.p_kw,
                "p_set_kw": self.p_set_kw, "p_max_kw": self.p_max_kw, "enabled": self.enabled,
                "ev_soc_pct": car.soc_pct if car else 0.0,
                "v2g": bool(self.v2g_capable and car is not None and car.v2g),
                "e_session_kwh": self.e_session_kwh, "e_total_kwh": self.e_total_kwh,
                "watchdog_s": self.watchdog_s or 0.0,
                # ISO 15118: what the car tells the charger (0 when no car is plugged in)
                "ev_departure_s": max(0.0, car.departure_s - self.now_s) if car else 0.0,
                "ev_energy_req_kwh": car.wants_kwh if car else 0.0}

    def _apply(self, point: str, value: PointValue) -> PointValue:
        if point == "enabled":
            self.enabled = bool(value)
            return self.enabled
        car_v2g = self.v2g_capable and self.car is not None and self.car.v2g
        lo = -self.p_max_kw if car_v2g else 0.0  # discharge only with a V2G car
        self.p_set_kw = clamp(float(value), lo, self.p_max_kw)
        return self.p_set_kw

    def safe_defaults(self) -> None:
        self.p_set_kw = self.fallback_p_kw


def safe_p_kw(sim: EvseSim, bus: AcBus) -> float:
    """The fallback power: the minimum charging current on every phase (6 A x 3 x 230 V
    is 4.14 kW), what a real charger is set to draw when its energy manager is silent."""
    return sim.min_current_a * sim.phases * bus.nominal_v / 1000.0


def _epoch(d: datetime | str) -> float:
    assert isinstance(d, datetime)
    return (d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp()
