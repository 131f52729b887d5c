"""The ``simulation:`` section of a site config: clock, seed, weather, per-device physics.

Everything is optional; without the section the simulator derives its parameters from
the device ratings and the site's position. Per-device overrides are keyed by device id
and checked against that device's nature.
"""

from __future__ import annotations

import re
from datetime import datetime, time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.config.models import SiteConfig
from gateway.model import Nature
from gateway.yamlsrc import PathKey, Problem, Source, SourceError, validation_problems

Pct = Annotated[float, Field(ge=0, le=100)]
Frac = Annotated[float, Field(ge=0, le=1)]
Eff = Annotated[float, Field(gt=0.5, le=1)]
PosKw = Annotated[float, Field(ge=0)]
WatchdogS = Annotated[float, Field(ge=0, le=3600)]  # 0 = no watchdog

LoadProfileName = Literal["H25", "G25", "L25", "P25", "S25", "constant"]
_HHMM = re.compile(r"^([01]?\d|2[0-3]):[0-5]\d$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClockSettings(_Strict):
    start: datetime | None = None  # ISO 8601; naive = UTC; default: now
    speed: Annotated[float, Field(gt=0, le=1_000_000)] = 1.0  # sim seconds per wall second
    max_step_s: Annotated[float, Field(gt=0, le=3600)] = 300.0  # longer steps are split


class WeatherSettings(_Strict):
    # clear-sky models need no data; "tmy" uses the TMY3 year pvlib ships (by local day/hour)
    model: Literal["simplified_solis", "haurwitz", "tmy"] = "simplified_solis"
    cloudiness: Frac = 0.0  # 0 = clear sky; 1 = heavy, variable clouds (clear-sky models)
    temp_mean_c: float | None = None  # annual mean air temperature (default from latitude)
    temp_day_swing_c: Annotated[float, Field(ge=0, le=40)] = 8.0  # peak-to-peak, daily
    wind_mean_ms: Annotated[float, Field(ge=0, le=30)] = 6.0  # at hub height


class PvSim(_Strict):
    tilt_deg: Annotated[float, Field(ge=0, le=90)] | None = None  # default ~ latitude x 0.75
    azimuth_deg: Annotated[float, Field(ge=0, lt=360)] | None = None  # default equator-facing
    system_losses_pct: Annotated[float, Field(ge=0, le=50)] = 10.0
    inverter_efficiency: Eff = 0.97
    temp_coeff_pct_per_c: Annotated[float, Field(ge=-1, le=0)] = -0.35
    watchdog_s: WatchdogS = 60.0


class WindSim(_Strict):
    mean_speed_ms: Annotated[float, Field(ge=0, le=30)] | None = None  # default: weather
    turbulence: Frac = 0.15  # std deviation / mean of the wind-speed random walk
    cut_in_ms: Annotated[float, Field(gt=0)] = 3.0
    rated_ms: Annotated[float, Field(gt=0)] = 12.0
    cut_out_ms: Annotated[float, Field(gt=0)] = 25.0
    rated_rpm: Annotated[float, Field(gt=0)] = 40.0
    watchdog_s: WatchdogS = 60.0

    @model_validator(mode="after")
    def _order(self) -> WindSim:
        if not self.cut_in_ms < self.rated_ms < self.cut_out_ms:
            raise ValueError(f"need cut_in_ms < rated_ms < cut_out_ms, found {self.cut_in_ms}, "
                             f"{self.rated_ms}, {self.cut_out_ms}")
        return self


class BatterySim(_Strict):
    initial_soc_pct: Pct = 50.0
    soc_min_pct: Pct = 5.0
    soc_max_pct: Pct = 95.0
    initial_soh_pct: Annotated[float, Field(gt=0, le=100)] = 100.0
    charge_efficiency: Eff = 0.95
    discharge_efficiency: Eff = 0.95
    cycle_life: Annotated[float, Field(gt=0)] = 6000.0  # full cycles to 80 % SOH
    initial_temp_c: float | None = None  # default: ambient
    thermal_capacity_kj_per_k: Annotated[float, Field(gt=0)] | None = None  # default 9/kWh
    thermal_resistance_k_per_kw: Annotated[float, Field(gt=0)] | None = None  # default 400/kWh
    cells_series: Annotated[int, Field(ge=1, le=1000)] | None = None  # default from v_nominal
    grid_forming: bool = False  # power-on default of the grid_forming point (forms islands)
    watchdog_s: WatchdogS = 60.0

    @model_validator(mode="after")
    def _limits(self) -> BatterySim:
        if not self.soc_min_pct < self.soc_max_pct:
            raise ValueError(f"soc_min_pct ({self.soc_min_pct}) must be below soc_max_pct "
                             f"({self.soc_max_pct})")
        return self


class BmsSim(_Strict):
    battery: str | None = None  # id of the bess whose pack this BMS watches (default: first)


class EvSession(_Strict):
    """One planned vehicle visit. Times: ISO datetime (once) or "HH:MM" (every day, local)."""

    arrival: datetime | str
    departure: datetime | str
    energy_kwh: Annotated[float, Field(gt=0)]  # energy the driver wants
    capacity_kwh: Annotated[float, Field(gt=0)] = 60.0
    initial_soc_pct: Pct = 30.0
    v2g: bool = False
    p_max_kw: Annotated[float, Field(gt=0)] | None = None  # vehicle's own limit

    @field_validator("arrival", "departure", mode="before")
    @classmethod
    def _when(cls, v: object) -> object:
        if isinstance(v, str) and not _HHMM.match(v):
            try:
                return datetime.fromisoformat(v)
            except ValueError:
                raise ValueError(f"expected an ISO datetime or 'HH:MM', found {v!r}") from None
        return v

    def daily(self) -> bool:
        return isinstance(self.arrival, str)

    @model_validator(mode="after")
    def _consistent(self) -> EvSession:
        if isinstance(self.arrival, str) != isinstance(self.departure, str):
            raise ValueError("arrival and departure must both be 'HH:MM' or both datetimes")
        if (isinstance(self.arrival, datetime) and isinstance(self.departure, datetime)
                and _aware(self.departure) <= _aware(self.arrival)):
            raise ValueError("departure must be after arrival")
        return self


def _aware(d: datetime) -> datetime:
    from datetime import UTC
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def parse_hhmm(text: str) -> time:
    h, m = text.split(":")
    return time(int(h), int(m))


class RandomSessions(_Strict):
    """Draws vehicle visits day by day from the seed."""

    per_day: Annotated[float, Field(ge=0, le=20)] = 1.0  # mean visits per day (Poisson)
    arrival_mean_h: Annotated[float, Field(ge=0, lt=24)] = 8.5  # local time
    arrival_std_h: Annotated[float, Field(ge=0, le=12)] = 1.5
    dwell_mean_h: Annotated[float, Field(gt=0, le=48)] = 8.0
    energy_mean_kwh: Annotated[float, Field(gt=0)] = 20.0
    capacity_kwh: Annotated[float, Field(gt=0)] = 60.0
    v2g_share: Frac = 0.0


class EvseSim(_Strict):
    v2g_capable: bool = False  # the charger can discharge (a V2G car is needed too)
    default_p_kw: PosKw | None = None  # charge power before any gateway (default: rating)
    # Charge power once the communication watchdog expires. Real chargers fall back to a
    # configured safe current, never to full power. Default: the lower of default_p_kw
    # and min_current_a on every phase at the site's nominal voltage; 0 = stop charging.
    fallback_p_kw: PosKw | None = None
    min_current_a: Annotated[float, Field(ge=0, le=80)] = 6.0  # IEC 61851 minimum
    phases: Literal[1, 3] = 3
    sessions: list[EvSession] = Field(default_factory=list)
    random_sessions: RandomSessions | None = None
    watchdog_s: WatchdogS = 60.0


class LoadSim(_Strict):
    profile: LoadProfileName = "G25"
    annual_kwh: Annotated[float, Field(gt=0)] | None = None  # default from rating or 50 MWh
    p_kw: PosKw | None = None  # for profile "constant" (default: rating or 10 kW)
    power_factor: Annotated[float, Field(gt=0, le=1)] = 0.95
    noise_pct: Annotated[float, Field(ge=0, le=50)] = 3.0


class MeterSim(_Strict):
    measures: list[str] | None = None  # device ids metered (default: the grid connection)
    side: Literal["grid", "site"] = "grid"  # which side of the PCC breaker for v/f
    power_factor: Annotated[float, Field(gt=0, le=1)] = 0.97


class BreakerSim(_Strict):
    initially_closed: bool = True
    # A feeder breaker: the devices it supplies lose power while it is open. A breaker
    # that supplies none is a PCC breaker: open, the whole site is off the grid.
    supplies: list[str] = Field(default_factory=list)


DeviceSim = PvSim | WindSim | BatterySim | BmsSim | EvseSim | LoadSim | MeterSim | BreakerSim

OVERRIDES: dict[Nature, type[BaseModel]] = {
    Nature.PV_INVERTER: PvSim, Nature.WIND_TURBINE: WindSim, Nature.BESS: BatterySim,
    Nature.BMS: BmsSim, Nature.EVSE: EvseSim, Nature.LOAD: LoadSim, Nature.METER: MeterSim,
    Nature.BREAKER: BreakerSim,
}


class WriteJournalSettings(_Strict):
    """The devices' own record of the writes that reached them (sim_devices.journal):
    the last ``per_device`` of each device, written as JSON lines to ``path`` (relative:
    to the working directory) when the simulator stops, and served on its control
    channel (``journal``)."""

    per_device: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    path: str | None = None


class _Section(_Strict):
    """The raw section; per-device entries are checked once their nature is known."""

    seed: Annotated[int, Field(ge=0)] = 0
    clock: ClockSettings = Field(default_factory=ClockSettings)
    weather: WeatherSettings = Field(default_factory=WeatherSettings)
    background_load: LoadSim | None = None  # unmetered site consumption behind the PCC
    write_journal: WriteJournalSettings | None = None  # off unless given
    devices: dict[str, dict[str, Any]] = Field(default_factory=dict)


class SimulationSettings(_Strict):
    """The validated ``simulation:`` section."""

    seed: int = 0
    clock: ClockSettings = Field(default_factory=ClockSettings)
    weather: WeatherSettings = Field(default_factory=WeatherSettings)
    background_load: LoadSim | None = None
    write_journal: WriteJournalSettings | None = None
    devices: dict[str, DeviceSim] = Field(default_factory=dict)

    def device(self, device_id: str, kind: type[Any]) -> Any:
        """The override for ``device_id`` or the defaults of ``kind``."""
        got = self.devices.get(device_id)
        return got if isinstance(got, kind) else kind()


def load_simulation_settings(cfg: SiteConfig, src: Source | None = None
                             ) -> SimulationSettings:
    """Validate ``cfg.simulation``; errors are a SourceError positioned in ``src``."""
    source = src if src is not None else Source(file="site config", data=None)
    problems: list[Problem] = []
    raw = cfg.simulation or {}
    try:
        section = _Section.model_validate(raw)
    except ValidationError as err:
        raise SourceError(validation_problems(err, source, ("simulation",))) from None
    natures = {d.id: d.nature for d in cfg.devices}
    devices: dict[str, DeviceSim] = {}
    for dev_id, body in section.devices.items():
        path: PathKey = ("simulation", "devices", dev_id)
        if dev_id not in natures:
            known = ", ".join(sorted(natures)) or "none"
            problems.append(_key_problem(source, path, f"no device '{dev_id}' in devices "
                                                       f"(known: {known})"))
            continue
        kind = OVERRIDES[natures[dev_id]]
        try:
            devices[dev_id] = kind.model_validate(body or {})  # type: ignore[assignment]
        except ValidationError as err:
            problems.extend(validation_problems(err, source, path))
            continue
        problems.extend(_cross_check(dev_id, devices[dev_id], natures, source, path))
    if problems:
        raise SourceError(problems)
    return SimulationSettings(seed=section.seed, clock=section.clock, weather=section.weather,
                              background_load=section.background_load,
                              write_journal=section.write_journal, devices=devices)


def _key_problem(src: Source, path: PathKey, message: str) -> Problem:
    from gateway.yamlsrc import format_path
    return Problem(src.file, src.keys.get(path) or src.mark(path), format_path(path), message)


def _cross_check(dev_id: str, ov: BaseModel, natures: dict[str, Nature], src: Source,
                 path: PathKey) -> list[Problem]:
    out: list[Problem] = []
    if (isinstance(ov, BmsSim) and ov.battery is not None
            and natures.get(ov.battery) != Nature.BESS):
        out.append(src.problem((*path, "battery"), f"'{ov.battery}' is not a bess device"))
    if isinstance(ov, MeterSim) and ov.measures is not None:
        for i, other in enumerate(ov.measures):
            if other not in natures:
                out.append(src.problem((*path, "measures", i), f"no device '{other}'"))
            elif natures[other] in (Nature.METER, Nature.BREAKER, Nature.BMS):
                out.append(src.problem((*path, "measures", i),
                                       f"'{other}' is a {natures[other]}, it has no flow"))
    if isinstance(ov, BreakerSim):
        for i, other in enumerate(ov.supplies):
            if other not in natures:
                out.append(src.problem((*path, "supplies", i), f"no device '{other}'"))
            elif natures[other] in (Nature.METER, Nature.BREAKER, Nature.BMS):
                out.append(src.problem((*path, "supplies", i),
                                       f"'{other}' is a {natures[other]}, a feeder breaker "
                                       f"supplies devices that draw or give power"))
    return out
