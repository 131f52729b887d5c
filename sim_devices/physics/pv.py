"""PV inverter: plane-of-array irradiance -> DC (temperature-corrected) -> AC, limited."""

from __future__ import annotations

import numpy as np

from gateway.model import Nature, PointValue
from sim_devices.physics.base import AcBus, SimModel, clamp
from sim_devices.physics.weather import Weather
from sim_devices.settings import PvSim

NOCT_RISE_C = 25.0  # cell above air at 800 W/m2 (NOCT 45 degC)


class PvInverter(SimModel):
    """A grid-following PV inverter on a fixed array; goes off when the bus is dead."""

    nature = Nature.PV_INVERTER

    def __init__(self, device_id: str, bus: AcBus, weather: Weather, kwp: float,
                 p_rated_kw: float, sim: PvSim | None = None) -> None:
        sim = sim or PvSim()
        super().__init__(device_id, bus, sim.watchdog_s)
        self.weather = weather
        self.kwp = kwp
        self.p_rated_kw = p_rated_kw
        lat = weather.latitude
        self.tilt_deg = sim.tilt_deg if sim.tilt_deg is not None else round(abs(lat) * 0.75, 1)
        self.azimuth_deg = (sim.azimuth_deg if sim.azimuth_deg is not None
                            else (180.0 if lat >= 0 else 0.0))
        self.derate = 1.0 - sim.system_losses_pct / 100.0
        self.eta = sim.inverter_efficiency
        self.gamma = sim.temp_coeff_pct_per_c / 100.0
        self.p_limit_pct = 100.0
        self.p_limit_enabled = True
        self.p_kw = 0.0
        self.dc_p_kw = 0.0
        self.e_total_kwh = 0.0
        self.temp_c = 20.0
        self.state = "sleeping"

    def available_kw(self, t: float) -> tuple[float, float, float]:
        """(AC kW available before limits, DC kW, air degC) at time t."""
        poa = self.weather.poa_w_m2(t, self.tilt_deg, self.azimuth_deg)
        air = self.weather.temp_air_c(t)
        cell = air + poa / 800.0 * NOCT_RISE_C
        dc = max(0.0, self.kwp * poa / 1000.0 * (1.0 + self.gamma * (cell - 25.0)) * self.derate)
        return min(dc * self.eta, self.p_rated_kw), dc, air

    def available_kw_at(self, ts: np.ndarray) -> np.ndarray:
        """``available_kw`` (AC) at many epoch seconds, vectorised (reference data)."""
        poa = self.weather.poa_at(ts, self.tilt_deg, self.azimuth_deg)
        cell = self.weather.temp_at(ts) + poa / 800.0 * NOCT_RISE_C
        dc = np.maximum(0.0, self.kwp * poa / 1000.0 * (1.0 + self.gamma * (cell - 25.0))
                        * self.derate)
        return np.minimum(dc * self.eta, self.p_rated_kw)

    def limit_kw(self) -> float:
        return (self.p_rated_kw * self.p_limit_pct / 100.0 if self.p_limit_enabled
                else self.p_rated_kw)

    def step(self, now_s: float, dt_s: float) -> None:
        avail, dc, air = self.available_kw(now_s - dt_s / 2.0)  # mid-step: exact energy
        if not self.bus.energized:
            self.p_kw, self.dc_p_kw, self.state = 0.0, 0.0, "off"
        elif dc <= 0.0:
            self.p_kw, self.dc_p_kw, self.state = 0.0, 0.0, "sleeping"
        else:
            lim = self.limit_kw()
            self.p_kw = min(avail, lim)
            self.state = "throttled" if avail > lim + 1e-9 else "mppt"
            self.dc_p_kw = self.p_kw / self.eta if self.state == "throttled" else dc
        self.e_total_kwh += self.p_kw * dt_s / 3600.0
        self.temp_c = air + 15.0 * self.p_kw / max(self.p_rated_kw, 1e-9)

    def reduce_to(self, p_kw: float, dt_s: float) -> None:
        """Island over-frequency response: produce no more than p_kw this step."""
        if p_kw < self.p_kw:
            self.e_total_kwh -= (self.p_kw - p_kw) * dt_s / 3600.0
            self.p_kw = max(0.0, p_kw)
            self.dc_p_kw = self.p_kw / self.eta
            self.state = "throttled"

    def consumption_kw(self) -> float:
        return -self.p_kw

    def read_points(self) -> dict[str, PointValue]:
        v, f = self.ac()
        return {"p_kw": self.p_kw, "q_kvar": 0.0, "v_v": v, "f_hz": f,
                "p_rated_kw": self.p_rated_kw, "p_limit_pct": self.p_limit_pct,
                "p_limit_enabled": self.p_limit_enabled, "e_total_kwh": self.e_total_kwh,
                "dc_p_kw": self.dc_p_kw, "temp_c": self.temp_c, "state": self.state}

    def _apply(self, point: str, value: PointValue) -> PointValue:
        if point == "p_limit_pct":
            self.p_limit_pct = clamp(float(value), 0.0, 100.0)
            return self.p_limit_pct
        self.p_limit_enabled = bool(value)  # p_limit_enabled
        return self.p_limit_enabled

    def safe_defaults(self) -> None:
        self.p_limit_pct = 100.0
