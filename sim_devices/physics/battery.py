"""Battery: a pack (SOC, efficiency, heat, ageing, cell voltages), its BESS and its BMS.

The pack is separate from the BESS so a BMS device can show the same cells. Power
limits derate near the SOC limits and when hot; the SOC never crosses its limits
(the last step's power is cut so it lands exactly on them).
"""

from __future__ import annotations

import math

import numpy as np

from gateway.model import Nature, PointValue
from sim_devices.physics.base import AcBus, SimModel, clamp
from sim_devices.physics.weather import Weather
from sim_devices.settings import BatterySim

# LFP open-circuit voltage per cell over SOC (%).
_OCV_SOC = np.array([0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100], dtype=float)
_OCV_V = np.array([2.50, 3.05, 3.20, 3.25, 3.28, 3.29, 3.30, 3.31, 3.32, 3.33, 3.35, 3.40,
                   3.55])
CELL_NOMINAL_V = 3.2
DERATE_START_C = 45.0
DERATE_ZERO_C = 55.0
FAULT_C = 60.0
TAPER_PCT = 10.0  # charge power tapers over the last 10 % of SOC below soc_max

ALARM_TEMP_WARN = 1
ALARM_TEMP_FAULT = 2
ALARM_SOC_LOW = 4
ALARM_SOC_HIGH = 8
ALARM_WATCHDOG = 16


class Pack:
    """The cells: energy, temperature, health and voltages."""

    def __init__(self, capacity_kwh: float, p_charge_max_kw: float, p_discharge_max_kw: float,
                 sim: BatterySim, weather: Weather | None, v_nominal_v: float | None = None,
                 ) -> None:
        self.capacity_rated_kwh = capacity_kwh
        self.p_charge_rated_kw = p_charge_max_kw
        self.p_discharge_rated_kw = p_discharge_max_kw
        self.sim = sim
        self.weather = weather
        self.soc_pct = sim.initial_soc_pct
        self.soh_pct = sim.initial_soh_pct
        self.eta_c = sim.charge_efficiency
        self.eta_d = sim.discharge_efficiency
        self.n_series = sim.cells_series or (
            max(1, round(v_nominal_v / CELL_NOMINAL_V)) if v_nominal_v
            else (16 if capacity_kwh < 30 else 240))
        i_rated = max(p_charge_max_kw, p_discharge_max_kw, 1e-3) * 1000.0 / (
            self.n_series * CELL_NOMINAL_V)
        self.cell_r_ohm = 0.03 * CELL_NOMINAL_V / i_rated  # 3 % drop at rated current
        self.c_th_kj_k = sim.thermal_capacity_kj_per_k or 9.0 * capacity_kwh
        self.r_th_k_kw = sim.thermal_resistance_k_per_kw or 400.0 / capacity_kwh
        self.temp_c = sim.initial_temp_c if sim.initial_temp_c is not None else 20.0
        self.p_dc_kw = 0.0  # + = discharge, at the cells
        self.v_pack_v = self.n_series * self.ocv_cell_v()
        self.i_a = 0.0
        self.cell_v_min_v = self.cell_v_max_v = 0.0
        self._voltages()

    @property
    def capacity_kwh(self) -> float:
        return self.capacity_rated_kwh * self.soh_pct / 100.0

    def ocv_cell_v(self) -> float:
        return float(np.interp(self.soc_pct, _OCV_SOC, _OCV_V))

    def _temp_factor(self) -> float:
        if self.temp_c >= FAULT_C:
            return 0.0
        return clamp((DERATE_ZERO_C - self.temp_c) / (DERATE_ZERO_C - DERATE_START_C), 0.0, 1.0)

    def charge_avail_kw(self) -> float:
        """AC charge power the pack accepts now (SOC taper, temperature)."""
        room = self.sim.soc_max_pct - self.soc_pct
        if room <= 1e-9:
            return 0.0
        taper = clamp(room / TAPER_PCT, 0.1, 1.0)
        cold = 0.5 if self.temp_c < 5.0 else 1.0
        return self.p_charge_rated_kw * taper * cold * self._temp_factor()

    def discharge_avail_kw(self) -> float:
        if self.soc_pct - self.sim.soc_min_pct <= 1e-9:
            return 0.0
        return self.p_discharge_rated_kw * self._temp_factor()

    def ambient_c(self, t: float) -> float:
        """Container air: the HVAC holds it between 10 and 30 degC."""
        return clamp(self.weather.temp_air_c(t), 10.0, 30.0) if self.weather else 20.0

    def flow(self, p_ac_kw: float, now_s: float, dt_s: float) -> float:
        """Move AC power (+ = discharge) for dt; returns the AC power actually moved."""
        cap = self.capacity_kwh
        h = dt_s / 3600.0
        p = p_ac_kw
        if p > 0 and h > 0:
            e_avail = max(0.0, (self.soc_pct - self.sim.soc_min_pct) / 100.0 * cap)
            p = min(p, e_avail * self.eta_d / h)
            e_dc = p / self.eta_d * h
            self.p_dc_kw = p / self.eta_d
            self.soc_pct = max(self.sim.soc_min_pct, self.soc_pct - e_dc / cap * 100.0)
        elif p < 0 and h > 0:
            e_room = max(0.0, (self.sim.soc_max_pct - self.soc_pct) / 100.0 * cap)
            p = max(p, -e_room / self.eta_c / h)
            e_dc = -p * self.eta_c * h
            self.p_dc_kw = p * self.eta_c
            self.soc_pct = min(self.sim.soc_max_pct, self.soc_pct + e_dc / cap * 100.0)
        else:
            p, e_dc, self.p_dc_kw = 0.0, 0.0, 0.0
        # ageing: 20 % of health over cycle_life full cycles (one cycle = 2 x capacity)
        self.soh_pct = max(0.0, self.soh_pct - 20.0 * e_dc / (
            2.0 * self.capacity_rated_kwh * self.sim.cycle_life))
        self._heat(abs(p - self.p_dc_kw), now_s, dt_s)
        self._voltages()
        return p

    def _heat(self, loss_kw: float, now_s: float, dt_s: float) -> None:
        """Lumped thermal model, integrated exactly (stable for any dt)."""
        t_ss = self.ambient_c(now_s) + loss_kw * self.r_th_k_kw
        tau = self.r_th_k_kw * self.c_th_kj_k  # K/kW x kJ/K = s
        self.temp_c = t_ss + (self.temp_c - t_ss) * math.exp(-dt_s / tau)

    def _voltages(self) -> None:
        ocv = self.ocv_cell_v()
        v = self.n_series * ocv
        self.i_a = self.p_dc_kw * 1000.0 / v
        cell = ocv - self.i_a * self.cell_r_ohm
        self.v_pack_v = self.n_series * cell
        spread = 0.010 + 0.04 * max(0.0, abs(self.soc_pct - 50.0) - 35.0) / 15.0
        self.cell_v_min_v = cell - spread / 2.0
        self.cell_v_max_v = cell + spread / 2.0

    def alarms(self) -> int:
        a = 0
        if self.temp_c >= DERATE_START_C + 5.0:
            a |= ALARM_TEMP_WARN
        if self.temp_c >= FAULT_C:
            a |= ALARM_TEMP_FAULT
        if self.soc_pct <= self.sim.soc_min_pct + 1e-9:
            a |= ALARM_SOC_LOW
        if self.soc_pct >= self.sim.soc_max_pct - 1e-9:
            a |= ALARM_SOC_HIGH
        return a


class Battery(SimModel):
    """A battery energy storage system (inverter + pack), p + = discharge."""

    nature = Nature.BESS

    def __init__(self, device_id: str, bus: AcBus, pack: Pack) -> None:
        super().__init__(device_id, bus, pack.sim.watchdog_s)
        self.pack = pack
        self.grid_forming = pack.sim.grid_forming  # commanded; the setting = power-on default
        self.p_set_kw = 0.0
        self.p_kw = 0.0
        self.island_target_kw: float | None = None  # set by the site when forming an island
        self.e_charged_kwh = 0.0
        self.e_discharged_kwh = 0.0
        self.state = "standby"

    def step(self, now_s: float, dt_s: float) -> None:
        target = self.island_target_kw if self.island_target_kw is not None else self.p_set_kw
        pk = self.pack
        if not self.bus.energized or pk.temp_c >= FAULT_C:
            target = 0.0
        target = clamp(target, -pk.charge_avail_kw(), pk.discharge_avail_kw())
        self.p_kw = pk.flow(target, now_s, dt_s)
        h = dt_s / 3600.0
        if self.p_kw > 0:
            self.e_discharged_kwh += self.p_kw * h
        else:
            self.e_charged_kwh -= self.p_kw * h
        if pk.temp_c >= FAULT_C:
            self.state = "fault"
        elif self.p_kw > 1e-6:
            self.state = "discharging"
        elif self.p_kw < -1e-6:
            self.state = "charging"
        else:
            self.state = "standby"

    def consumption_kw(self) -> float:
        return -self.p_kw

    @property
    def forming(self) -> bool:
        """Forms an island now: commanded grid-forming, has energy and is not in fault."""
        pk = self.pack
        return (self.grid_forming and pk.temp_c < FAULT_C
                and pk.soc_pct > pk.sim.soc_min_pct + 1e-9)

    def trip_forming(self) -> None:
        """The island it carried collapsed: the inverter drops out of grid-forming."""
        self.grid_forming = False

    def read_points(self) -> dict[str, PointValue]:
        pk = self.pack
        return {"soc_pct": pk.soc_pct, "soh_pct": pk.soh_pct, "p_kw": self.p_kw, "q_kvar": 0.0,
                "p_set_kw": self.p_set_kw, "p_charge_max_kw": pk.charge_avail_kw(),
                "p_discharge_max_kw": pk.discharge_avail_kw(), "capacity_kwh": pk.capacity_kwh,
                "v_dc_v": pk.v_pack_v, "i_dc_a": pk.i_a, "cell_temp_max_c": pk.temp_c + 1.5,
                "cell_v_min_v": pk.cell_v_min_v, "cell_v_max_v": pk.cell_v_max_v,
                "e_charged_kwh": self.e_charged_kwh, "e_discharged_kwh": self.e_discharged_kwh,
                "watchdog_s": self.watchdog_s or 0.0, "state": self.state,
                "grid_forming": self.forming,
                "alarms": pk.alarms() | (ALARM_WATCHDOG if self.watchdog_expired else 0)}

    def _apply(self, point: str, value: PointValue) -> PointValue:
        pk = self.pack  # writable besides watchdog_s: p_set_kw and grid_forming
        if point == "grid_forming":
            self.grid_forming = bool(value)
            return self.forming  # an empty or faulted PCS cannot form: reads back False
        p = clamp(float(value), -pk.p_charge_rated_kw, pk.p_discharge_rated_kw)
        if p < 0 and pk.soc_pct >= pk.sim.soc_max_pct - 1e-9:
            p = 0.0  # full: refuses to charge
        if p > 0 and pk.soc_pct <= pk.sim.soc_min_pct + 1e-9:
            p = 0.0  # empty: refuses to discharge
        self.p_set_kw = p
        return p

    def safe_defaults(self) -> None:
        self.p_set_kw = 0.0


class Bms(SimModel):
    """A battery management system: a read-only view of a pack."""

    nature = Nature.BMS

    def __init__(self, device_id: str, bus: AcBus, pack: Pack) -> None:
        super().__init__(device_id, bus, None)
        self.pack = pack
        self._own = False

    def own_pack(self) -> None:
        """This BMS's pack has no BESS; the BMS steps it (at rest) itself."""
        self._own = True

    def step(self, now_s: float, dt_s: float) -> None:
        if self._own:
            self.pack.flow(0.0, now_s, dt_s)

    def read_points(self) -> dict[str, PointValue]:
        pk = self.pack
        v = max(pk.v_pack_v, 1e-3)
        return {"soc_pct": pk.soc_pct, "soh_pct": pk.soh_pct, "v_pack_v": pk.v_pack_v,
                "i_pack_a": pk.i_a, "cell_v_min_v": pk.cell_v_min_v,
                "cell_v_max_v": pk.cell_v_max_v, "cell_temp_min_c": pk.temp_c - 1.0,
                "cell_temp_max_c": pk.temp_c + 1.5,
                "i_charge_max_a": pk.charge_avail_kw() * pk.eta_c * 1000.0 / v,
                "i_discharge_max_a": pk.discharge_avail_kw() / pk.eta_d * 1000.0 / v,
                "alarms": pk.alarms()}

    def _apply(self, point: str, value: PointValue) -> PointValue:
        raise ValueError(f"bms point '{point}' is read-only")

    def safe_defaults(self) -> None:
        pass
