"""Wind turbine: a power curve driven by a seeded wind-speed random walk."""

from __future__ import annotations

import math

import numpy as np

from gateway.model import Nature, PointValue
from sim_devices.physics.base import AcBus, SimModel, clamp
from sim_devices.physics.weather import Weather
from sim_devices.settings import WindSim

SLOW_TAU_S = 3 * 3600.0  # weather-scale wander of the mean
SLOW_REL_SD = 0.25
FAST_TAU_S = 60.0  # gusts
RESTART_MARGIN_MS = 3.0  # storm stop hysteresis


class WindTurbine(SimModel):
    """Cubic power curve between cut-in and rated speed; storm stop above cut-out."""

    nature = Nature.WIND_TURBINE

    def __init__(self, device_id: str, bus: AcBus, weather: Weather, p_rated_kw: float,
                 rng: np.random.Generator, sim: WindSim | None = None) -> None:
        sim = sim or WindSim()
        super().__init__(device_id, bus, sim.watchdog_s)
        self.weather = weather
        self.sim = sim
        self.p_rated_kw = p_rated_kw
        self.rng = rng
        self._slow = 0.0
        self._fast = 0.0
        self.wind_speed_ms = sim.mean_speed_ms or weather.settings.wind_mean_ms
        self.p_limit_pct = 100.0
        self.p_kw = 0.0
        self.rotor_rpm = 0.0
        self.e_total_kwh = 0.0
        self.state = "waiting_for_wind"
        self._storm = False

    def power_curve_kw(self, v: float) -> float:
        s = self.sim
        if v < s.cut_in_ms or v >= s.cut_out_ms:
            return 0.0
        x = (v ** 3 - s.cut_in_ms ** 3) / (s.rated_ms ** 3 - s.cut_in_ms ** 3)
        return self.p_rated_kw * clamp(x, 0.0, 1.0)

    def _ou(self, x: float, tau: float, sd: float, dt: float) -> float:
        a = math.exp(-dt / tau)
        return x * a + sd * math.sqrt(1.0 - a * a) * float(self.rng.standard_normal())

    def step(self, now_s: float, dt_s: float) -> None:
        mean = (self.sim.mean_speed_ms if self.sim.mean_speed_ms is not None
                else self.weather.wind_mean_ms(now_s))
        self._slow = self._ou(self._slow, SLOW_TAU_S, SLOW_REL_SD, dt_s)
        self._fast = self._ou(self._fast, FAST_TAU_S, self.sim.turbulence, dt_s)
        v = max(0.0, mean * (1.0 + self._slow + self._fast))
        self.wind_speed_ms = v
        s = self.sim
        if v >= s.cut_out_ms:
            self._storm = True
        elif v < s.cut_out_ms - RESTART_MARGIN_MS:
            self._storm = False
        avail = 0.0 if self._storm else self.power_curve_kw(v)
        lim = self.p_rated_kw * self.p_limit_pct / 100.0
        if not self.bus.energized:
            self.p_kw, self.state = 0.0, "off"
        elif self._storm:
            self.p_kw, self.state = 0.0, "storm_stop"
        elif avail <= 0.0:
            self.p_kw, self.state = 0.0, "waiting_for_wind"
        else:
            self.p_kw = min(avail, lim)
            self.state = "throttled" if avail > lim + 1e-9 else "producing"
        turning = self.state in ("producing", "throttled")
        self.rotor_rpm = s.rated_rpm * clamp(v / s.rated_ms, 0.3, 1.0) if turning else 0.0
        self.e_total_kwh += self.p_kw * dt_s / 3600.0

    def reduce_to(self, p_kw: float, dt_s: float) -> None:
        """Island over-frequency response: produce no more than p_kw this step."""
        if p_kw < self.p_kw:
            self.e_total_kwh -= (self.p_kw - p_kw) * dt_s / 3600.0
            self.p_kw = max(0.0, p_kw)
            self.state = "throttled"

    def consumption_kw(self) -> float:
        return -self.p_kw

    def read_points(self) -> dict[str, PointValue]:
        v, f = self.ac()
        return {"p_kw": self.p_kw, "q_kvar": 0.0, "v_v": v, "f_hz": f,
                "wind_speed_ms": self.wind_speed_ms, "rotor_rpm": self.rotor_rpm,
                "p_limit_pct": self.p_limit_pct, "e_total_kwh": self.e_total_kwh,
                "state": self.state}

    def _apply(self, point: str, value: PointValue) -> PointValue:
        self.p_limit_pct = clamp(float(value), 0.0, 100.0)  # the only writable point
        return self.p_limit_pct

    def safe_defaults(self) -> None:
        self.p_limit_pct = 100.0
