"""Site loads: a standard profile (or constant power) with a little noise; can be shed."""

from __future__ import annotations

import math

import numpy as np

from gateway.model import Nature, PointValue
from sim_devices.physics.base import AcBus, SimModel
from sim_devices.physics.profiles import LoadProfile
from sim_devices.settings import LoadSim

NOISE_TAU_S = 900.0


class Load(SimModel):
    """A metered load; ``enabled = false`` opens its contactor (load shedding)."""

    nature = Nature.LOAD

    def __init__(self, device_id: str, bus: AcBus, profile: LoadProfile,
                 rng: np.random.Generator, sim: LoadSim | None = None) -> None:
        sim = sim or LoadSim()
        super().__init__(device_id, bus, None)
        self.profile = profile
        self.rng = rng
        self.noise_sd = sim.noise_pct / 100.0
        self.tan_phi = math.tan(math.acos(sim.power_factor))
        self.enabled = True
        self.p_kw = 0.0
        self._noise = 0.0

    def step(self, now_s: float, dt_s: float) -> None:
        if self.noise_sd > 0:
            a = math.exp(-dt_s / NOISE_TAU_S)
            self._noise = self._noise * a + self.noise_sd * math.sqrt(1 - a * a) * float(
                self.rng.standard_normal())
        if self.enabled and self.bus.energized:
            self.p_kw = max(0.0, self.profile.p_kw(now_s - dt_s / 2.0) * (1.0 + self._noise))
        else:
            self.p_kw = 0.0

    def consumption_kw(self) -> float:
        return self.p_kw

    def read_points(self) -> dict[str, PointValue]:
        return {"p_kw": self.p_kw, "q_kvar": self.p_kw * self.tan_phi, "enabled": self.enabled}

    def _apply(self, point: str, value: PointValue) -> PointValue:
        self.enabled = bool(value)  # the only writable point
        return self.enabled

    def safe_defaults(self) -> None:
        pass
