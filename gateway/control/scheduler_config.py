"""Config for the scheduler: the site's time-of-use tariff and the planning settings.

``tariff:`` and ``scheduler:`` are optional top-level sections of the site config. Tariff
periods are local times of day (site timezone) and may wrap past midnight; a period with
``days`` applies on those weekdays only. The first matching period wins; outside every
period the default prices apply.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_HHMM = re.compile(r"^([01]?\d|2[0-3]):[0-5]\d$|^24:00$")
Price = Annotated[float, Field(ge=-10, le=10)]  # per kWh; negative prices do happen
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Priority = Literal["emergency", "fleet", "public"]

if TYPE_CHECKING:  # numpy only where prices are computed: config checks stay light
    import numpy as np


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


class TariffPeriod(_Strict):
    """Prices during a time-of-day window, e.g. from "17:00" to "21:00"."""

    start: str = Field(alias="from")
    end: str = Field(alias="to")
    import_per_kwh: Price | None = None  # default: the tariff's default
    export_per_kwh: Price | None = None
    days: list[Weekday] | None = None  # default: every day

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not _HHMM.match(v):
            raise ValueError(f"expected a local time 'HH:MM', found {v!r}")
        return v

    @model_validator(mode="after")
    def _not_empty(self) -> TariffPeriod:
        if _minutes(self.start) == _minutes(self.end):
            raise ValueError(f"period from {self.start} to {self.end} is empty")
        return self

    def covers(self, minute_of_day: int, weekday: int) -> bool:
        if self.days is not None and WEEKDAYS[weekday] not in self.days:
            return False
        a, b = _minutes(self.start), _minutes(self.end)
        return a <= minute_of_day < b if a < b else (minute_of_day >= a or minute_of_day < b)


class Tariff(_Strict):
    """Time-of-use energy prices (per kWh) and an optional demand charge (per kW peak)."""

    currency: str = "EUR"
    import_per_kwh: Price = 0.30
    export_per_kwh: Price = 0.08
    periods: list[TariffPeriod] = Field(default_factory=list)
    demand_charge_per_kw: Annotated[float, Field(ge=0)] = 0.0  # per kW of the horizon's peak

    def price_at(self, t_s: float, tz: str) -> tuple[float, float]:
        """(import, export) price per kWh at epoch t_s."""
        local = datetime.fromtimestamp(t_s, ZoneInfo(tz))
        minute = local.hour * 60 + local.minute
        for p in self.periods:
            if p.covers(minute, local.weekday()):
                return (p.import_per_kwh if p.import_per_kwh is not None else
                        self.import_per_kwh,
                        p.export_per_kwh if p.export_per_kwh is not None else
                        self.export_per_kwh)
        return self.import_per_kwh, self.export_per_kwh

    def prices(self, start_s: float, step_s: float, n: int, tz: str
               ) -> tuple[np.ndarray, np.ndarray]:
        """Import and export prices at the middle of each of n steps."""
        import numpy as np

        pairs = [self.price_at(start_s + (i + 0.5) * step_s, tz) for i in range(n)]
        arr = np.asarray(pairs, dtype=float).reshape(n, 2)
        return arr[:, 0].copy(), arr[:, 1].copy()


# Used when a site config has no tariff (the simulate command says so in its header):
# a typical German business time-of-use tariff with a cheap night and an evening peak.
DEFAULT_TARIFF = Tariff(
    import_per_kwh=0.30, export_per_kwh=0.08,
    periods=[TariffPeriod.model_validate({"from": "22:00", "to": "06:00",
                                          "import_per_kwh": 0.20}),
             TariffPeriod.model_validate({"from": "17:00", "to": "21:00",
                                          "import_per_kwh": 0.45})])


class SchedulerSettings(_Strict):
    """When and how the scheduler plans."""

    enabled: bool = True
    interval_s: Annotated[float, Field(ge=10, le=3600)] = 300.0  # re-plan period
    horizon_h: Annotated[float, Field(ge=1, le=72)] = 24.0
    step_min: Annotated[int, Field(ge=1, le=60)] = 15
    time_limit_s: Annotated[float, Field(gt=0, le=600)] = 10.0  # HiGHS time limit
    # priority class of sessions on each charger, until the controller's session
    # registry tells (emergency > fleet > public)
    ev_priority: dict[str, Priority] = Field(default_factory=dict)
    battery_reserve_soc_pct: Annotated[float, Field(ge=0, le=100)] = 0.0

    @property
    def step_s(self) -> float:
        return self.step_min * 60.0

    @property
    def n_steps(self) -> int:
        return max(1, round(self.horizon_h * 60 / self.step_min))


def step_floor(t_s: float, step_s: float) -> float:
    """Start of the step containing t_s (steps aligned to the epoch, i.e. to UTC quarters)."""
    return float(math.floor(t_s / step_s) * step_s)
