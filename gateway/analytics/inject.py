"""Ground truth for the detectors: simulate a site with faults injected, score the detectors.

Faults go into the physics models where the fault is physical (a degrading PV string, a
failing battery fan, capacity fade, a charger that lost a phase) and into the readings
where it is a measurement fault (a stuck sensor, a drifting meter). The battery runs a
plain self-consumption rule so it cycles as it would on a real site.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

from gateway.analytics.anomaly import Anomaly, AnomalyModel, Telemetry
from gateway.analytics.site import SiteInfo, site_info
from gateway.config.models import SiteConfig

KINDS = ("pv_degradation", "fan_failure", "stuck_sensor", "meter_drift", "capacity_fade",
         "evse_derate")
METER_DRIFT_KW_PER_DAY = 1.5


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


def simulate(cfg: SiteConfig, start_s: float, days: float, faults: list[Fault],
             seed: int = 0, step_s: float = 60.0) -> tuple[Telemetry, pd.DataFrame]:
    """Telemetry per device and the weather context, one sample per ``step_s``."""
    from sim_devices.clock import ManualClock
    from sim_devices.physics.battery import Battery
    from sim_devices.physics.evse import Evse
    from sim_devices.physics.pv import PvInverter
    from sim_devices.physics.site import SimSite
    from sim_devices.settings import load_simulation_settings

    settings = load_simulation_settings(cfg).model_copy(update={"seed": seed})
    site = SimSite(cfg, settings, ManualClock(start_s))
    pv0 = next((m for m in site.models.values() if isinstance(m, PvInverter)), None)
    bats = [m for m in site.models.values() if isinstance(m, Battery)]
    n = int(days * 86400 / step_s)
    rows: dict[str, list[dict[str, float]]] = {d: [] for d in site.models}
    ctx: list[tuple[float, float]] = []
    times = start_s + step_s * np.arange(1, n + 1)
    applied: set[Fault] = set()
    frozen: dict[Fault, float] = {}
    for t in times:
        net = site.balance_kw() + sum(b.p_kw for b in bats)  # without the batteries
        for b in bats:
            site.write(b.device_id, "p_set_kw", float(net) / max(len(bats), 1), wall_s=0.0)
        site.step(step_s)
        for f in faults:
            if t >= f.start_s and f not in applied:
                applied.add(f)
                _apply_physical(site.models[f.device], f)
        for d, m in site.models.items():
            rows[d].append({k: float(v) for k, v in m.read_points().items()
                            if isinstance(v, int | float)})
        for f in faults:
            if t >= f.start_s:
                _apply_reading(rows[f.device][-1], f, t, frozen)
        poa = pv0.weather.poa_w_m2(t - step_s / 2, pv0.tilt_deg, pv0.azimuth_deg) if pv0 else 0.0
        ctx.append((poa, site.weather.temp_air_c(t)))
    idx = pd.DatetimeIndex(pd.to_datetime(times, unit="s", utc=True))
    tel = {d: pd.DataFrame(r, index=idx) for d, r in rows.items()}
    del Evse  # imported for the isinstance-free physical faults below (kept for mypy)
    return tel, pd.DataFrame(ctx, index=idx, columns=["poa_w_m2", "temp_air_c"])


def _apply_physical(model: object, f: Fault) -> None:
    if f.kind == "pv_degradation":
        model.derate *= 0.8  # type: ignore[attr-defined]  # one string of five lost
    elif f.kind == "fan_failure":
        model.pack.r_th_k_kw *= 4.0  # type: ignore[attr-defined]
    elif f.kind == "capacity_fade":
        model.pack.soh_pct *= 0.85  # type: ignore[attr-defined]
    elif f.kind == "evse_derate":
        model.p_max_kw *= 0.5  # type: ignore[attr-defined]


def _apply_reading(row: dict[str, float], f: Fault, t: float, frozen: dict[Fault, float]
                   ) -> None:
    if f.kind == "stuck_sensor":
        row[f.signal] = frozen.setdefault(f, row[f.signal])
    elif f.kind == "meter_drift":
        row["p_kw"] += METER_DRIFT_KW_PER_DAY * (t - f.start_s) / 86400.0


def scenarios(n: int, start: datetime, train_days: int = 4, eval_days: int = 3
              ) -> list[Scenario]:
    """``n`` scenarios cycling through the fault kinds; every 7th one has no fault at all."""
    targets = {"pv_degradation": "pv_roof", "fan_failure": "battery",
               "capacity_fade": "battery", "meter_drift": "grid_meter",
               "evse_derate": "ev_bay1"}
    stuck = [("battery", "cell_temp_max_c"), ("pv_roof", "p_kw"), ("grid_meter", "v_v")]
    out = []
    for k in range(n):
        t0 = start + pd.Timedelta(days=9 * k)
        sc = Scenario(k, t0, train_days, eval_days)
        fault_s = (pd.Timestamp(t0) + pd.Timedelta(days=train_days)).timestamp()
        if k % 7 != 6:
            kind = KINDS[k % len(KINDS)]
            if kind == "stuck_sensor":
                dev, sig = stuck[(k // len(KINDS)) % len(stuck)]
                sc.faults.append(Fault(kind, dev, fault_s, sig))
            else:
                sc.faults.append(Fault(kind, targets[kind], fault_s))
        out.append(sc)
    return out


@dataclass
class Evaluation:
    truth: set[tuple[int, str, str]]  # (scenario, device, local day)
    found: set[tuple[int, str, str]]
    kind_of: dict[tuple[int, str, str], str]
    anomalies: list[tuple[int, Anomaly]]
    events: dict[tuple[int, str], str] = field(default_factory=dict)  # injected faults
    units: set[int] = field(default_factory=set)

    def event_scores(self) -> tuple[float, float]:
        """(precision, recall) per injected fault: any alarm on its device in its scenario."""
        flagged = {(s, d) for s, d, _ in self.found}
        tp = len(flagged & set(self.events))
        return (tp / len(flagged) if flagged else 1.0,
                tp / len(self.events) if self.events else 1.0)

    @property
    def precision(self) -> float:
        return len(self.truth & self.found) / len(self.found) if self.found else 1.0

    @property
    def recall(self) -> float:
        return len(self.truth & self.found) / len(self.truth) if self.truth else 1.0

    def table(self) -> pd.DataFrame:
        rows = []
        for kind in sorted(set(self.kind_of.values())):
            t = {k for k in self.truth if self.kind_of[k] == kind}
            rows.append({"fault": kind, "device_days": len(t), "detected": len(t & self.found),
                         "recall": len(t & self.found) / len(t) if t else float("nan")})
        fp = self.found - self.truth
        rows.append({"fault": "(none: false alarms)", "device_days": 0, "detected": len(fp),
                     "recall": float("nan")})
        rows.append({"fault": "ALL", "device_days": len(self.truth),
                     "detected": len(self.truth & self.found), "recall": self.recall})
        return pd.DataFrame(rows).set_index("fault")


def evaluate(cfg: SiteConfig, scs: list[Scenario], forest_trees: int = 50,
             info: SiteInfo | None = None) -> Evaluation:
    """Fit the detectors on each scenario's healthy days, detect on its faulty days."""
    info = info or site_info(cfg)
    ev = Evaluation(set(), set(), {}, [])
    for sc in scs:
        t0 = pd.Timestamp(sc.start).timestamp()
        tel, ctx = simulate(cfg, t0, sc.train_days + sc.eval_days, sc.faults, sc.seed)
        cut = pd.Timestamp(t0 + sc.train_days * 86400.0, unit="s", tz="UTC")
        train = {d: df[df.index < cut] for d, df in tel.items()}
        test = {d: df[df.index >= cut] for d, df in tel.items()}
        model = AnomalyModel(info, forest_trees).fit(train, ctx[ctx.index < cut])
        first = pd.DatetimeIndex(test[next(iter(test))].index)
        local = pd.Series(1, index=first.tz_convert(info.timezone).date)
        per_day = local.groupby(level=0).size()
        days = [str(d) for d, n in per_day.items() if n * 60.0 >= 12 * 3600]  # >= half a day
        for a in model.detect(test, ctx[ctx.index >= cut]):
            day = str(pd.Timestamp(a.ts).tz_convert(info.timezone).date())
            if day in days:  # scored on whole local days only, alarms and truth alike
                ev.found.add((sc.seed, a.device, day))
                ev.anomalies.append((sc.seed, a))
        ev.units.add(sc.seed)
        for f in sc.faults:
            ev.events[(sc.seed, f.device)] = f.kind
            for day in days:
                key = (sc.seed, f.device, day)
                if pd.Timestamp(day, tz=info.timezone).timestamp() + 86400 > f.start_s:
                    ev.truth.add(key)
                    ev.kind_of[key] = f.kind
    return ev
