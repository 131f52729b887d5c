"""Device natures: the standard point names and units control code sees.

Every device has a nature. A nature fixes the names, units and sign conventions of its
points, so control, console and historian never see a register or a protocol detail.
Units are part of the name (``p_kw``, ``soc_pct``); this table is the one place that
lists them all.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

PointValue = float | int | bool | str


class Nature(enum.StrEnum):
    PV_INVERTER = "pv_inverter"
    WIND_TURBINE = "wind_turbine"
    BESS = "bess"
    BMS = "bms"
    EVSE = "evse"
    METER = "meter"
    BREAKER = "breaker"
    LOAD = "load"


class Quality(enum.StrEnum):
    GOOD = "good"
    STALE = "stale"  # older than its max age
    OFFLINE = "offline"  # device not reachable / last read failed
    INVALID = "invalid"  # the device answered, but with a value that cannot be true


class Kind(enum.StrEnum):
    FLOAT = "float"
    INT = "int"
    BOOL = "bool"
    STR = "str"


@dataclass(frozen=True, slots=True)
class PointSpec:
    name: str
    unit: str  # "" for dimensionless / enumerations
    kind: Kind
    description: str
    writable: bool = False


def _p(name: str, unit: str, description: str, kind: Kind = Kind.FLOAT, writable: bool = False
       ) -> PointSpec:
    return PointSpec(name, unit, kind, description, writable)


_COMMON_AC = [
    _p("q_kvar", "kvar", "reactive power, + = injecting (generator) / importing (meter)"),
    _p("v_v", "V", "AC voltage (line-to-neutral, average of phases)"),
    _p("f_hz", "Hz", "grid frequency"),
]

NATURES: dict[Nature, dict[str, PointSpec]] = {
    Nature.PV_INVERTER: {p.name: p for p in [
        _p("p_kw", "kW", "AC active power, + = production"),
        *_COMMON_AC,
        _p("p_rated_kw", "kW", "nameplate AC power"),
        _p("p_limit_pct", "%", "active power limit, % of rated", writable=True),
        _p("p_limit_enabled", "", "active power limit enabled", Kind.BOOL, writable=True),
        _p("e_total_kwh", "kWh", "lifetime energy produced"),
        _p("dc_p_kw", "kW", "DC input power"),
        _p("temp_c", "°C", "heat sink / cabinet temperature"),
        _p("state", "", "operating state (off, sleeping, starting, mppt, throttled, fault, ...)",
           Kind.STR),
    ]},
    Nature.WIND_TURBINE: {p.name: p for p in [
        _p("p_kw", "kW", "AC active power, + = production"),
        *_COMMON_AC,
        _p("wind_speed_ms", "m/s", "nacelle wind speed"),
        _p("rotor_rpm", "rpm", "rotor speed"),
        _p("p_limit_pct", "%", "active power limit, % of rated", writable=True),
        _p("e_total_kwh", "kWh", "lifetime energy produced"),
        _p("state", "", "operating state", Kind.STR),
    ]},
    Nature.BESS: {p.name: p for p in [
        _p("soc_pct", "%", "state of charge"),
        _p("soh_pct", "%", "state of health"),
        _p("p_kw", "kW", "AC active power, + = discharge"),
        _p("q_kvar", "kvar", "reactive power"),
        _p("p_set_kw", "kW", "active power setpoint, + = discharge", writable=True),
        _p("p_charge_max_kw", "kW", "available charge power now"),
        _p("p_discharge_max_kw", "kW", "available discharge power now"),
        _p("capacity_kwh", "kWh", "usable energy capacity"),
        _p("v_dc_v", "V", "DC bus voltage"),
        _p("i_dc_a", "A", "DC current, + = discharge"),
        _p("cell_temp_max_c", "°C", "hottest cell temperature"),
        _p("cell_v_min_v", "V", "lowest cell voltage"),
        _p("cell_v_max_v", "V", "highest cell voltage"),
        _p("e_charged_kwh", "kWh", "lifetime energy charged"),
        _p("e_discharged_kwh", "kWh", "lifetime energy discharged"),
        _p("watchdog_s", "s", "communication watchdog timeout", writable=True),
        _p("grid_forming", "", "the inverter forms the island's voltage and frequency "
           "(reads back whether it does)", Kind.BOOL, writable=True),
        _p("state", "", "operating state (standby, charging, discharging, fault, ...)",
           Kind.STR),
        _p("alarms", "", "alarm bit field (vendor specific)", Kind.INT),
    ]},
    Nature.BMS: {p.name: p for p in [
        _p("soc_pct", "%", "state of charge"),
        _p("soh_pct", "%", "state of health"),
        _p("v_pack_v", "V", "pack voltage"),
        _p("i_pack_a", "A", "pack current, + = discharge"),
        _p("cell_v_min_v", "V", "lowest cell voltage"),
        _p("cell_v_max_v", "V", "highest cell voltage"),
        _p("cell_temp_min_c", "°C", "coldest cell temperature"),
        _p("cell_temp_max_c", "°C", "hottest cell temperature"),
        # writable where the BMS takes a lower limit from the gateway (CAN EMS request)
        _p("i_charge_max_a", "A", "charge current limit", writable=True),
        _p("i_discharge_max_a", "A", "discharge current limit", writable=True),
        _p("alarms", "", "alarm / protection bit field", Kind.INT),
    ]},
    Nature.EVSE: {p.name: p for p in [
        _p("state", "", "IEC 61851 state A..F", Kind.STR),
        _p("connected", "", "vehicle plugged in", Kind.BOOL),
        _p("p_kw", "kW", "active power, + = charging the EV, - = V2G discharge"),
        _p("p_set_kw", "kW", "power setpoint, + = charge, - = discharge (V2G)", writable=True),
        _p("p_max_kw", "kW", "charger rating"),
        _p("enabled", "", "charging allowed", Kind.BOOL, writable=True),
        _p("ev_soc_pct", "%", "vehicle state of charge (if reported)"),
        _p("v2g", "", "vehicle and charger support discharge", Kind.BOOL),
        _p("e_session_kwh", "kWh", "energy delivered this session"),
        _p("ev_departure_s", "s", "time until the vehicle's planned departure (ISO 15118)"),
        _p("ev_energy_req_kwh", "kWh", "energy the vehicle still requests (ISO 15118)"),
        _p("e_total_kwh", "kWh", "lifetime energy delivered"),
        _p("watchdog_s", "s", "communication watchdog timeout", writable=True),
    ]},
    Nature.METER: {p.name: p for p in [
        _p("p_kw", "kW", "total active power, + = import"),
        *_COMMON_AC,
        _p("p_l1_kw", "kW", "phase L1 active power"),
        _p("p_l2_kw", "kW", "phase L2 active power"),
        _p("p_l3_kw", "kW", "phase L3 active power"),
        _p("v_l1_v", "V", "phase L1 voltage"),
        _p("v_l2_v", "V", "phase L2 voltage"),
        _p("v_l3_v", "V", "phase L3 voltage"),
        _p("i_l1_a", "A", "phase L1 current"),
        _p("i_l2_a", "A", "phase L2 current"),
        _p("i_l3_a", "A", "phase L3 current"),
        _p("pf", "", "power factor"),
        _p("e_import_kwh", "kWh", "energy imported"),
        _p("e_export_kwh", "kWh", "energy exported"),
    ]},
    Nature.BREAKER: {p.name: p for p in [
        _p("closed", "", "breaker closed", Kind.BOOL),
        _p("trip", "", "trip command (write true to open)", Kind.BOOL, writable=True),
        _p("close", "", "close command (write true to close)", Kind.BOOL, writable=True),
        _p("i_a", "A", "current through the breaker"),
        _p("tripped", "", "tripped by protection", Kind.BOOL),
    ]},
    Nature.LOAD: {p.name: p for p in [
        _p("p_kw", "kW", "active power consumed"),
        _p("q_kvar", "kvar", "reactive power consumed"),
        _p("enabled", "", "load connected (false = shed)", Kind.BOOL, writable=True),
    ]},
}


def point_spec(nature: Nature | str, point: str) -> PointSpec | None:
    """The standard definition of ``point`` for ``nature``, or None if it has none."""
    return NATURES[Nature(nature)].get(point)


@dataclass(frozen=True, slots=True)
class Invalid:
    """What a driver returns for a point whose decoded value cannot be true: outside the
    template's or the DBC signal's range, or a vendor's "not available"/"error" pattern
    (all bits set, SunSpec 0x8000/0xFFFF). SiteState stores it with quality INVALID, so
    control never uses it; ``raw`` is kept for diagnostics, ``why`` says what was wrong."""

    raw: PointValue | None
    why: str


@dataclass(slots=True)
class Reading:
    """The latest value of one point of one device."""

    value: PointValue | None
    unit: str
    ts: float  # wall clock (time.time()) of the successful read that produced it
    quality: Quality = Quality.GOOD

    def as_dict(self) -> dict[str, object]:
        return {"value": self.value, "unit": self.unit, "ts": self.ts,
                "quality": str(self.quality)}


@dataclass(slots=True)
class DeviceHealth:
    """Communication health of one device, derived from its polls."""

    quality: Quality = Quality.OFFLINE
    last_ok: float | None = None
    last_error: str | None = None
    polls: int = 0
    errors: int = 0
    consecutive_errors: int = 0
    latency_ms: float | None = None
    extra: dict[str, object] = field(default_factory=dict)
