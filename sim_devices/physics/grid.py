"""The utility grid, the site meter(s) and the PCC breaker."""

from __future__ import annotations

import math

import numpy as np

from gateway.model import Nature, PointValue
from sim_devices.physics.base import AcBus, SimModel

V_REL_SD = 0.004  # slow voltage wander, relative
F_SD_HZ = 0.015  # frequency wander
WANDER_TAU_S = 60.0
V_NOISE_V = 0.15  # per-phase measurement noise
V_DROP_PER_KW_PER_PHASE = 0.01  # weak grid: volts lost per kW drawn on a phase


class Grid:
    """The utility side of the PCC: voltage and frequency that wander a little."""

    def __init__(self, nominal_v: float, nominal_f_hz: float, rng: np.random.Generator) -> None:
        self.nominal_v = nominal_v
        self.nominal_f_hz = nominal_f_hz
        self.rng = rng
        self.available = True
        self._dv = 0.0
        self._df = 0.0

    def step(self, dt_s: float) -> None:
        a = math.exp(-dt_s / WANDER_TAU_S)
        b = math.sqrt(1 - a * a)
        n = self.rng.standard_normal(2)
        self._dv = self._dv * a + V_REL_SD * b * float(n[0])
        self._df = self._df * a + F_SD_HZ * b * float(n[1])

    @property
    def v_v(self) -> float:
        return self.nominal_v * (1.0 + self._dv) if self.available else 0.0

    @property
    def f_hz(self) -> float:
        return self.nominal_f_hz + self._df if self.available else 0.0


class Meter(SimModel):
    """A three-phase meter; + = import. The site sets ``flow_kw`` before each step."""

    nature = Nature.METER

    def __init__(self, device_id: str, bus: AcBus, grid: Grid, rng: np.random.Generator,
                 side: str = "grid", power_factor: float = 0.97,
                 measures: list[str] | None = None) -> None:
        super().__init__(device_id, bus, None)
        self.grid = grid
        self.rng = rng
        self.side = side
        self.pf = power_factor
        self.tan_phi = math.tan(math.acos(power_factor))
        self.measures = measures  # None = the PCC
        shares = 1.0 / 3.0 + rng.normal(0.0, 0.02, 3)
        self.shares = shares / shares.sum()
        self.v_offsets = rng.normal(0.0, 0.004, 3)
        self.flow_kw = 0.0
        self.p_kw = 0.0
        self.p_ph = [0.0, 0.0, 0.0]
        self.v_ph = [0.0, 0.0, 0.0]
        self.i_ph = [0.0, 0.0, 0.0]
        self.v_v = 0.0
        self.f_hz = 0.0
        self.e_import_kwh = 0.0
        self.e_export_kwh = 0.0

    def step(self, now_s: float, dt_s: float) -> None:
        if self.side == "grid" and self.measures is None:
            v0, f0 = self.grid.v_v, self.grid.f_hz
        else:
            v0, f0 = self.ac()
        self.p_kw = self.flow_kw
        self.p_ph = [self.p_kw * float(s) for s in self.shares]
        noise = self.rng.normal(0.0, V_NOISE_V, 3)
        if v0 > 0:
            self.v_ph = [v0 * (1.0 + float(o)) - V_DROP_PER_KW_PER_PHASE * p + float(n)
                         for o, p, n in zip(self.v_offsets, self.p_ph, noise, strict=True)]
            self.i_ph = [abs(p) * 1000.0 / (v * self.pf) for p, v in
                         zip(self.p_ph, self.v_ph, strict=True)]
        else:
            self.v_ph = [0.0, 0.0, 0.0]
            self.i_ph = [0.0, 0.0, 0.0]
        self.v_v = sum(self.v_ph) / 3.0
        self.f_hz = f0 + float(self.rng.normal(0.0, 0.002)) if f0 > 0 else 0.0
        h = dt_s / 3600.0
        if self.p_kw > 0:
            self.e_import_kwh += self.p_kw * h
        else:
            self.e_export_kwh -= self.p_kw * h

    def read_points(self) -> dict[str, PointValue]:
        return {"p_kw": self.p_kw, "q_kvar": self.p_kw * self.tan_phi, "v_v": self.v_v,
                "f_hz": self.f_hz, "p_l1_kw": self.p_ph[0], "p_l2_kw": self.p_ph[1],
                "p_l3_kw": self.p_ph[2], "v_l1_v": self.v_ph[0], "v_l2_v": self.v_ph[1],
                "v_l3_v": self.v_ph[2], "i_l1_a": self.i_ph[0], "i_l2_a": self.i_ph[1],
                "i_l3_a": self.i_ph[2], "pf": self.pf if self.p_kw else 1.0,
                "e_import_kwh": self.e_import_kwh, "e_export_kwh": self.e_export_kwh}

    def _apply(self, point: str, value: PointValue) -> PointValue:
        raise ValueError(f"meter point '{point}' is read-only")

    def safe_defaults(self) -> None:
        pass


class Breaker(SimModel):
    """The PCC breaker: open = the site is islanded. Over-current trips it."""

    nature = Nature.BREAKER

    def __init__(self, device_id: str, bus: AcBus, i_max_a: float | None = None,
                 closed: bool = True) -> None:
        super().__init__(device_id, bus, None)
        self.i_max_a = i_max_a
        self.closed = closed
        self.tripped = False
        self.i_a = 0.0  # set by the site each step (phase current average)

    def step(self, now_s: float, dt_s: float) -> None:
        if not self.closed:
            self.i_a = 0.0
        elif self.i_max_a is not None and self.i_a > self.i_max_a:
            self.closed, self.tripped = False, True

    def read_points(self) -> dict[str, PointValue]:
        # trip/close are commands; they read back as the position they command
        return {"closed": self.closed, "trip": not self.closed, "close": self.closed,
                "i_a": self.i_a, "tripped": self.tripped}

    def _apply(self, point: str, value: PointValue) -> PointValue:
        if value and point == "trip":
            self.closed = False
        elif value and point == "close":
            self.closed, self.tripped = True, False
        return bool(value)

    def safe_defaults(self) -> None:
        pass
