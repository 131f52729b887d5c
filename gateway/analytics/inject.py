"""Ground truth for the detectors: simulate a site with faults injected.

Faults go into the physics models where the fault is physical (a lost PV string, soiling
that grows every day, a failing battery fan, capacity fade, a charger that lost a phase)
and into the readings where it is a measurement fault (a stuck sensor, a drifting meter,
a battery that keeps reporting the SOH and capacity it had before it faded). Readings are
rounded to the resolution of the device's template registers, as the gateway sees them.
The battery runs a plain self-consumption rule so it cycles as it would on a real site.

Scenarios come in *families* (season and weather): detectors are tuned on
``TUNING_FAMILIES`` and scored on ``HELD_OUT_FAMILIES`` (gateway.analytics.evaluation),
a fixed split. Each faulty scenario has one fault at a random moment inside its
evaluation window; clean scenarios have none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from gateway.analytics.anomaly_base import Telemetry
from gateway.config.models import SiteConfig
from gateway.model import Nature

KINDS = ("pv_string_loss", "pv_soiling", "fan_failure", "stuck_sensor", "meter_drift",
         "capacity_fade", "evse_derate")
METER_DRIFT_KW_PER_DAY = 1.5
SOILING_PER_DAY = 0.04  # share of the PV output lost per day of soiling
STRING_LOSS = 0.2  # one string of five
FADE = 0.85  # capacity left after a fade
# (device nature, point) that freeze in the stuck-sensor faults
STUCK = (("bess", "soc_pct"), ("meter", "f_hz"), ("bess", "cell_temp_max_c"),
         ("pv_inverter", "p_kw"), ("meter", "v_v"))


@dataclass(frozen=True)
class Fault:
    kind: str
    device: str
    start_s: float
    signal: str = ""  # stuck_sensor: which point freezes


@dataclass
class Scenario:
    seed: int
    start: datetime
    train_days: int
    eval_days: int
    faults: list[Fault] = field(default_factory=list)
    family: str = ""
    cloudiness: float | None = None  # None: the site config's weather


@dataclass(frozen=True)
class Family:
    """Conditions a group of scenarios shares: the season and how cloudy it is."""

    name: str
    month: int
    cloudiness: float
    seed_base: int


FAMILIES = {f.name: f for f in (
    Family("spring_clear", 4, 0.1, 1000), Family("summer_broken", 7, 0.4, 2000),
    Family("autumn_mixed", 10, 0.3, 3000),
    Family("winter_clear", 2, 0.1, 4000), Family("early_summer_overcast", 6, 0.6, 5000),
    Family("late_summer_clear", 9, 0.15, 6000))}
# The fixed split: thresholds and choices are made on these ...
TUNING_FAMILIES = ("spring_clear", "summer_broken", "autumn_mixed")
# ... and only ever scored on these (other seasons, other weather, other random draws).
HELD_OUT_FAMILIES = ("winter_clear", "early_summer_overcast", "late_summer_clear")


def fault_targets(cfg: SiteConfig) -> dict[str, str]:
    """The first device of each nature the faults need (nature value -> device id)."""
    out: dict[str, str] = {}
    for d in cfg.devices:
        if d.nature is Nature.METER and d.role not in (None, "grid"):
            continue
        out.setdefault(d.nature.value, d.id)
    return out


def family_scenarios(cfg: SiteConfig, family: str, year: int = 2025, train_days: int = 4,
                     eval_days: int = 5, clean: int = 2) -> list[Scenario]:
    """One scenario per fault (each stuck signal its own) plus ``clean`` without any, each
    fault at a random time in the evaluation window (not in its last 12 hours)."""
    fam = FAMILIES[family]
    rng = np.random.default_rng(fam.seed_base)
    tgt = fault_targets(cfg)
    plan: list[tuple[str, str, str]] = []
    for kind in KINDS:
        if kind == "stuck_sensor":
            plan += [(kind, tgt[n], sig) for n, sig in STUCK if n in tgt]
        else:
            nature = {"pv_string_loss": "pv_inverter", "pv_soiling": "pv_inverter",
                      "fan_failure": "bess", "capacity_fade": "bess", "meter_drift": "meter",
                      "evse_derate": "evse"}[kind]
            if nature in tgt:
                plan.append((kind, tgt[nature], ""))
    plan += [("", "", "")] * clean
    out = []
    for k, (kind, dev, sig) in enumerate(plan):
        day0 = int(rng.integers(0, 27))
        t0 = datetime(year, fam.month, 1 + day0, tzinfo=UTC)
        sc = Scenario(fam.seed_base + k, t0, train_days, eval_days, family=family,
                      cloudiness=fam.cloudiness)
        if kind:
            onset = float(rng.uniform(0.0, eval_days - 0.5)) * 86400.0
            start = pd.Timestamp(t0).timestamp() + train_days * 86400.0 + onset
            sc.faults.append(Fault(kind, dev, start, sig))
        out.append(sc)
    return out


def _resolution(cfg: SiteConfig) -> dict[str, dict[str, float]]:
    """Per device, the step of each integer register point (what the gateway can see)."""
    from drivers.template import load_template

    out: dict[str, dict[str, float]] = {}
    for d in cfg.devices:
        try:
            tpl = load_template(d.template)
        except (KeyError, ValueError, OSError):
            continue
        pts = getattr(tpl, "points", {})
        out[d.id] = {name: float(p.scale) for name, p in pts.items()
                     if str(getattr(p, "type", "")).startswith(("int", "uint"))
                     and getattr(p, "scale_factor", None) is None and getattr(p, "scale", None)}
    return out


def simulate(cfg: SiteConfig, start_s: float, days: float, faults: list[Fault],
             seed: int = 0, step_s: float = 60.0, cloudiness: float | None = None
             ) -> tuple[Telemetry, pd.DataFrame]:
    """Telemetry per device and the weather context, one sample per ``step_s``."""
    from sim_devices.clock import ManualClock
    from sim_devices.physics.battery import Battery
    from sim_devices.physics.pv import PvInverter
    from sim_devices.physics.site import SimSite
    from sim_devices.settings import load_simulation_settings

    settings = load_simulation_settings(cfg).model_copy(update={"seed": seed})
    if cloudiness is not None:
        settings = settings.model_copy(update={"weather": settings.weather.model_copy(
            update={"cloudiness": cloudiness})})
    site = SimSite(cfg, settings, ManualClock(start_s))
    pv0 = next((m for m in site.models.values() if isinstance(m, PvInverter)), None)
    bats = [m for m in site.models.values() if isinstance(m, Battery)]
    res = _resolution(cfg)
    n = int(days * 86400 / step_s)
    rows: dict[str, list[dict[str, float]]] = {d: [] for d in site.models}
    ctx: list[tuple[float, float]] = []
    times = start_s + step_s * np.arange(1, n + 1)
    applied: dict[Fault, float] = {}  # fault -> the model's value before it
    frozen: dict[Fault, dict[str, float]] = {}
    for t in times:
        net = site.balance_kw() + sum(b.p_kw for b in bats)  # without the batteries
        for b in bats:
            site.write(b.device_id, "p_set_kw", float(net) / max(len(bats), 1), wall_s=0.0)
        for f in faults:
            if t >= f.start_s:
                _apply_physical(site.models[f.device], f, t, applied)
        site.step(step_s)
        for d, m in site.models.items():
            row = {k: float(v) for k, v in m.read_points().items()
                   if isinstance(v, int | float)}
            for k, q in res.get(d, {}).items():
                if k in row:
                    row[k] = round(row[k] / q) * q
            rows[d].append(row)
        for f in faults:
            if t >= f.start_s:
                _apply_reading(rows[f.device], f, t, frozen)
        poa = pv0.weather.poa_w_m2(t - step_s / 2, pv0.tilt_deg, pv0.azimuth_deg) if pv0 else 0.0
        ctx.append((poa, site.weather.temp_air_c(t)))
    idx = pd.DatetimeIndex(pd.to_datetime(times, unit="s", utc=True))
    tel = {d: pd.DataFrame(r, index=idx) for d, r in rows.items()}
    return tel, pd.DataFrame(ctx, index=idx, columns=["poa_w_m2", "temp_air_c"])


def _apply_physical(model: object, f: Fault, t: float, applied: dict[Fault, float]) -> None:
    m: object = model
    first = f not in applied
    if f.kind in ("pv_string_loss", "pv_soiling"):
        base = applied.setdefault(f, m.derate)  # type: ignore[attr-defined]
        lost = STRING_LOSS if f.kind == "pv_string_loss" else min(
            0.9, SOILING_PER_DAY * (t - f.start_s) / 86400.0)
        m.derate = base * (1.0 - lost)  # type: ignore[attr-defined]
    elif not first:
        return
    elif f.kind == "fan_failure":
        applied[f] = m.pack.r_th_k_kw  # type: ignore[attr-defined]
        m.pack.r_th_k_kw *= 4.0  # type: ignore[attr-defined]
    elif f.kind == "capacity_fade":
        applied[f] = m.pack.soh_pct  # type: ignore[attr-defined]
        m.pack.soh_pct *= FADE  # type: ignore[attr-defined]
    elif f.kind == "evse_derate":
        applied[f] = m.p_max_kw  # type: ignore[attr-defined]
        m.p_max_kw *= 0.5  # type: ignore[attr-defined]
    else:
        applied[f] = 0.0


def _apply_reading(rows: list[dict[str, float]], f: Fault, t: float,
                   frozen: dict[Fault, dict[str, float]]) -> None:
    row = rows[-1]
    if f.kind == "stuck_sensor":
        keep = frozen.setdefault(f, {f.signal: (rows[-2] if len(rows) > 1 else row)[f.signal]})
        row.update(keep)
    elif f.kind == "capacity_fade":  # the BMS still reports what it had before the fade
        keep = frozen.setdefault(f, {k: (rows[-2] if len(rows) > 1 else row)[k]
                                     for k in ("soh_pct", "capacity_kwh") if k in row})
        row.update(keep)
    elif f.kind == "meter_drift":
        row["p_kw"] += METER_DRIFT_KW_PER_DAY * (t - f.start_s) / 86400.0
