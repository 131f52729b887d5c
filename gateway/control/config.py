"""The ``control:`` section (site controller, strategies, protection thresholds, emergency
behaviour) and the per-device ``control:`` options (load priority, EV defaults, ramps).

Every field is optional with a safe default, so ``control: {}`` switches control on with
protection and grid limits only doing their job. Models are pydantic, unknown keys are errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from gateway.control.strategies.ev_charging_config import EvChargingConfig
from gateway.control.strategies.grid_limits_config import GridLimitsConfig
from gateway.control.strategies.load_shedding_config import LoadSheddingConfig
from gateway.control.strategies.peak_shaving_config import PeakShavingConfig
from gateway.control.strategies.plan_tracking_config import PlanTrackingConfig
from gateway.control.strategies.section import Kw, Pct, Seconds
from gateway.control.strategies.self_consumption_config import SelfConsumptionConfig
from gateway.control.strategies.time_of_use_config import TimeOfUseConfig
from gateway.control.strategies.v2g_config import V2gConfig
from gateway.yamlsrc import MOVED_KEY, format_path

PriorityClass = Literal["emergency", "fleet", "public"]
LoadPriority = Literal["critical", "essential", "deferrable"]
CLASS_RANK: dict[str, int] = {"emergency": 0, "fleet": 1, "public": 2}
LOAD_RANK: dict[str, int] = {"critical": 0, "essential": 1, "deferrable": 2}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvDefaults(_Strict):
    """Session defaults of one charger, until the vehicle or an operator says otherwise."""

    priority: PriorityClass = "public"
    dwell_h: Annotated[float, Field(gt=0, le=72)] = 8.0  # departure = arrival + dwell
    energy_kwh: Annotated[float, Field(gt=0)] = 20.0  # wanted, when the car does not say
    v2g_allowed: bool = True  # the driver's consent (the car must also be able to)
    departure_soc_pct: Pct = 0.0  # the SOC the driver needs when leaving (V2G never below)


class DeviceControl(_Strict):
    """``devices[].control``: how the controller treats this device."""

    priority: LoadPriority | None = None  # loads: shed deferrable first, critical never
    ramp_kw_per_s: Annotated[float, Field(gt=0)] | None = None  # setpoint rate limit
    deadband_kw: Kw = 0.2  # smaller changes are not written (unless the watchdog is due)
    ev: EvDefaults | None = None  # chargers


class Strategies(_Strict):
    """One section per strategy, each declared next to its strategy (its switch
    ``enabled`` and its parameters; a bare boolean is ``{enabled: ...}``). Each can be
    turned off alone. The keys of the old flat section are refused with where they moved."""

    grid_limits: GridLimitsConfig = Field(default_factory=GridLimitsConfig)  # hard
    peak_shaving: PeakShavingConfig = Field(default_factory=PeakShavingConfig)
    self_consumption: SelfConsumptionConfig = Field(default_factory=SelfConsumptionConfig)
    time_of_use: TimeOfUseConfig = Field(default_factory=TimeOfUseConfig)
    ev_charging: EvChargingConfig = Field(default_factory=EvChargingConfig)
    v2g: V2gConfig = Field(default_factory=V2gConfig)
    load_shedding: LoadSheddingConfig = Field(default_factory=LoadSheddingConfig)
    plan_tracking: PlanTrackingConfig = Field(default_factory=PlanTrackingConfig)

    @model_validator(mode="wrap")
    @classmethod
    def _moved_keys(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Strategies:
        """A key of the old flat section is an error at that key saying where it went;
        the rest of the section is still checked, so every error shows at once."""
        if not isinstance(data, dict) or not MOVED.keys() & data.keys():
            return cast(Strategies, handler(data))
        errors = [InitErrorDetails(type=PydanticCustomError(MOVED_KEY, "moved: write {to}",
                                                            {"to": f"strategies.{MOVED[k]}"}),
                                   loc=(k,), input=v)
                  for k, v in data.items() if k in MOVED]
        try:
            handler({k: v for k, v in data.items() if k not in MOVED})
        except ValidationError as err:
            errors += [_again(e) for e in err.errors(include_url=False)]
        raise ValidationError.from_exception_data(cls.__name__, errors)


# The flat ``control.strategies`` keys before each strategy had its own section.
MOVED: dict[str, str] = {
    "peak_threshold_kw": "peak_shaving.threshold_kw",
    "reserve_soc_pct": "self_consumption.reserve_soc_pct",
    "pv_curtailment": "grid_limits.pv_curtailment",
    "cheap_below_per_kwh": "time_of_use.cheap_below_per_kwh",
    "expensive_above_per_kwh": "time_of_use.expensive_above_per_kwh",
    "tou_target_soc_pct": "time_of_use.target_soc_pct",
    "ev_pv_surplus": "ev_charging.pv_surplus",
    "ev_site_limit_kw": "ev_charging.site_limit_kw",
    "v2g_min_soc_pct": "v2g.min_soc_pct",
    "v2g_margin_h": "v2g.margin_h",
    "restore_hysteresis_kw": "load_shedding.restore_hysteresis_kw",
    "restore_delay_s": "load_shedding.restore_delay_s",
    "plan_stale_s": "plan_tracking.stale_s",
}


def _again(e: ErrorDetails) -> InitErrorDetails:
    """One of pydantic's errors, raised again as it was (type, place, message)."""
    kind = PydanticCustomError(e["type"], e["msg"].replace("{", "{{").replace("}", "}}"))
    return InitErrorDetails(type=kind, loc=e["loc"], input=e.get("input"))


class Protection(_Strict):
    """Thresholds (relative to site.grid nominal values) and how long they must hold."""

    enabled: bool = True
    over_voltage_pct: Annotated[float, Field(gt=0, le=50)] = 10.0
    under_voltage_pct: Annotated[float, Field(gt=0, le=100)] = 15.0
    voltage_delay_s: Seconds = 0.0
    over_frequency_hz: Annotated[float, Field(gt=0, le=10)] = 1.5
    under_frequency_hz: Annotated[float, Field(gt=0, le=10)] = 2.5
    frequency_delay_s: Seconds = 0.0
    over_current_pct: Annotated[float, Field(gt=0, le=500)] = 100.0  # of ratings.i_max_a
    current_delay_s: Seconds = 1.0
    cell_temp_max_c: float = 55.0
    cell_v_max_v: float = 3.65
    cell_v_min_v: float = 2.5
    battery_delay_s: Seconds = 0.0
    stale_after_s: Annotated[float, Field(gt=0)] | None = None  # default: device max age
    critical: list[str] = Field(default_factory=list)  # device ids (default: grid meter, bess)
    grid_loss_trip: bool = True  # open the PCC breaker and island on loss of grid
    reset_after_s: Seconds = 5.0  # a zeroed device is released this long after it is fine
    # BMS id -> the battery (bess) it guards: a cell fault or the loss of the BMS acts on
    # that battery only (a BMS that guards none is alarmed, and nothing is zeroed)
    bms_guards: dict[str, str] = Field(default_factory=dict)
    bms_loss_action: Literal["zero", "derate"] = "zero"  # BMS silent or invalid
    bms_loss_derate_pct: Pct = 50.0  # of the battery's ratings, with bms_loss_action derate


class Emergency(_Strict):
    pcc_breaker: str | None = None  # breaker between the site and the grid
    estop_open_breakers: list[str] = Field(default_factory=list)  # opened on emergency stop
    reconnect_delay_s: Seconds = 5.0  # grid back and healthy this long before reconnecting
    step_delay_s: Seconds = 1.0  # between the steps of reconnection and black start
    island_shed_essential_soc_pct: Pct = 40.0  # below this, islands keep critical loads only


class ControlConfig(_Strict):
    """The ``control:`` section; absent = no control (the gateway only monitors)."""

    controller: bool = True  # run the site controller here (protection runs regardless)
    cycle_s: Annotated[float, Field(ge=0.1, le=60)] = 1.0
    rewrite_s: Annotated[float, Field(gt=0, le=3600)] = 30.0  # when a device has no watchdog
    state_path: str | None = None  # alarms + audit SQLite (default: next to the historian)
    strategies: Strategies = Field(default_factory=Strategies)
    protection: Protection = Field(default_factory=Protection)
    emergency: Emergency = Field(default_factory=Emergency)


def reference_issues(control: ControlConfig, natures: dict[str, str]
                     ) -> list[tuple[tuple[str | int, ...], str]]:
    """Device ids in the section that are missing or of the wrong nature, each with its
    path inside ``control:`` (``natures``: device id -> nature of the site's devices)."""
    out: list[tuple[tuple[str | int, ...], str]] = []
    em = control.emergency
    refs: list[tuple[tuple[str | int, ...], str | None]] = [
        (("emergency", "pcc_breaker"), em.pcc_breaker)]
    refs += [(("emergency", "estop_open_breakers", i), b)
             for i, b in enumerate(em.estop_open_breakers)]
    for where, dev in refs:
        if dev is not None and natures.get(dev) != "breaker":
            out.append((where, f"'{dev}' is not a breaker of this site" if dev in natures
                        else f"no device '{dev}'"))
    for i, dev in enumerate(control.protection.critical):
        if dev not in natures:
            out.append((("protection", "critical", i), f"no device '{dev}'"))
    for bms, bat in control.protection.bms_guards.items():
        if natures.get(bms) != "bms":
            out.append((("protection", "bms_guards", bms),
                        f"'{bms}' is not a bms of this site" if bms in natures
                        else f"no device '{bms}'"))
        if natures.get(bat) != "bess":
            out.append((("protection", "bms_guards", bms),
                        f"'{bat}' is not a battery (bess) of this site" if bat in natures
                        else f"no device '{bat}'"))
    return out


def reference_problems(control: ControlConfig, natures: dict[str, str]) -> list[str]:
    """``reference_issues`` as one line each, e.g. "control.emergency.pcc_breaker: ..."."""
    return [f"{format_path(('control', *where))}: {msg}"
            for where, msg in reference_issues(control, natures)]


# Strategies that steer by the power at the grid connection (the PCC meter's p_kw).
GRID_STRATEGIES = ("grid_limits", "peak_shaving", "self_consumption")


def grid_meter_issue(control: ControlConfig, meters: Sequence[tuple[str, str | None]]
                     ) -> tuple[bool, str] | None:
    """Why control cannot see the grid connection, and whether that is an error (True) or
    only a warning; None when it can. ``meters``: (id, role) of the site's enabled meters.

    The controller and protection take the meter with ``role: grid`` as the PCC meter, or
    the only meter when the site has exactly one untagged meter (gateway/state.py).
    """
    if any(role == "grid" for _, role in meters):
        return None
    if len(meters) == 1 and meters[0][1] is None:
        return None
    if not meters:
        found = "the site has no meter"
        fix = "add a meter at the grid connection (PCC) with `role: grid`"
    elif len(meters) == 1:
        found = f"the only meter '{meters[0][0]}' is marked `role: sub`"
        fix = "mark the PCC meter with `role: grid`"
    else:
        found = (f"the site has {len(meters)} meters ({', '.join(m for m, _ in meters)}) "
                 f"and none is marked `role: grid`")
        fix = "mark the PCC meter with `role: grid`"
    steering = [s for s in GRID_STRATEGIES if getattr(control.strategies, s).enabled]
    if control.controller and steering:
        return True, (f"control cannot see the grid connection: {found}, so the controller "
                      f"knows neither grid power nor site load and {', '.join(steering)} "
                      f"do nothing; {fix}")
    return False, (f"control cannot see the grid connection: {found}; protection will not "
                   f"detect grid loss and the controller has no grid power; {fix}")
