"""Score the detectors against injected faults, per device and local day.

Each scenario's first ``train_days`` are the healthy baseline the detectors fit on; its
last ``eval_days`` are checked. A device-day is *faulty* from the local day its fault
starts to the end (gradual faults included: a day with 1 % soiling counts as faulty, so
recall is strict). Only whole local days are scored. Besides precision and recall this
reports each detector's false alarms per clean device-day, and for every fault how many
days it took to be found.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from gateway.analytics.anomaly import Anomaly, AnomalyModel
from gateway.analytics.inject import Fault, Scenario, simulate
from gateway.analytics.site import SiteInfo, site_info
from gateway.config.models import SiteConfig

Key = tuple[int, str, str]  # (scenario seed, device, local day)


@dataclass
class Evaluation:
    truth: set[Key] = field(default_factory=set)
    found: set[Key] = field(default_factory=set)
    kind_of: dict[Key, str] = field(default_factory=dict)
    anomalies: list[tuple[int, Anomaly]] = field(default_factory=list)
    events: dict[tuple[int, str], Fault] = field(default_factory=dict)  # injected faults
    device_days: set[Key] = field(default_factory=set)  # everything scored
    by_detector: dict[str, set[Key]] = field(default_factory=dict)
    days_of: dict[int, list[str]] = field(default_factory=dict)  # scored days per scenario

    @property
    def precision(self) -> float:
        return len(self.truth & self.found) / len(self.found) if self.found else 1.0

    @property
    def recall(self) -> float:
        return len(self.truth & self.found) / len(self.truth) if self.truth else 1.0

    def clean_device_days(self) -> int:
        return len(self.device_days - self.truth)

    def false_alarms(self) -> dict[str, int]:
        """Per detector: device-days it flagged that had no fault."""
        return {det: len(keys - self.truth) for det, keys in sorted(self.by_detector.items())}

    def days_to_detect(self) -> dict[tuple[int, str], int | None]:
        """Per injected fault: scored days from its onset day to the first day found (0 =
        the onset day itself); None when never found in the window."""
        out: dict[tuple[int, str], int | None] = {}
        for (seed, dev), _f in self.events.items():
            days = [d for d in self.days_of.get(seed, []) if (seed, dev, d) in self.truth]
            hit = [i for i, d in enumerate(days) if (seed, dev, d) in self.found]
            out[(seed, dev)] = hit[0] if hit else None
        return out

    def table(self) -> pd.DataFrame:
        rows = []
        for kind in sorted(set(self.kind_of.values())):
            t = {k for k in self.truth if self.kind_of[k] == kind}
            rows.append({"fault": kind, "device_days": len(t), "detected": len(t & self.found),
                         "recall": len(t & self.found) / len(t) if t else float("nan")})
        fp = self.found - self.truth
        rows.append({"fault": "(none: false alarms)", "device_days": self.clean_device_days(),
                     "detected": len(fp), "recall": float("nan")})
        rows.append({"fault": "ALL", "device_days": len(self.truth),
                     "detected": len(self.truth & self.found), "recall": self.recall})
        return pd.DataFrame(rows).set_index("fault")


def _kind(f: Fault) -> str:
    return f"{f.kind}:{f.signal}" if f.signal else f.kind


def evaluate(cfg: SiteConfig, scs: list[Scenario], forest_trees: int = 50,
             info: SiteInfo | None = None,
             make: Callable[[SiteInfo], AnomalyModel] | None = None,
             progress: Callable[[str], Any] | None = None) -> Evaluation:
    """Fit the detectors on each scenario's healthy days, detect on the days after."""
    info = info or site_info(cfg)
    ev = Evaluation()
    for sc in scs:
        t0 = pd.Timestamp(sc.start).timestamp()
        tel, ctx = simulate(cfg, t0, sc.train_days + sc.eval_days, sc.faults, sc.seed,
                            cloudiness=sc.cloudiness)
        cut = pd.Timestamp(t0 + sc.train_days * 86400.0, unit="s", tz="UTC")
        train = {d: df[df.index < cut] for d, df in tel.items()}
        test = {d: df[df.index >= cut] for d, df in tel.items()}
        model = make(info) if make else AnomalyModel(info, forest_trees)
        model.fit(train, ctx[ctx.index < cut])
        first = pd.DatetimeIndex(test[next(iter(test))].index)
        per_day = pd.Series(1, index=first.tz_convert(info.timezone).date).groupby(
            level=0).size()
        days = [str(d) for d, n in per_day.items() if n * 60.0 >= 12 * 3600]  # >= half a day
        ev.days_of[sc.seed] = days
        ev.device_days |= {(sc.seed, d, day) for d in test for day in days}
        for a in model.detect(test, ctx[ctx.index >= cut]):
            day = str(pd.Timestamp(a.ts).tz_convert(info.timezone).date())
            if day in days:  # scored on whole local days only, alarms and truth alike
                key = (sc.seed, a.device, day)
                ev.found.add(key)
                ev.by_detector.setdefault(a.detector, set()).add(key)
                ev.anomalies.append((sc.seed, a))
        for f in sc.faults:
            ev.events[(sc.seed, f.device)] = f
            for day in days:
                key = (sc.seed, f.device, day)
                if pd.Timestamp(day, tz=info.timezone).timestamp() + 86400 > f.start_s:
                    ev.truth.add(key)
                    ev.kind_of[key] = _kind(f)
        if progress:
            progress(f"{sc.family or 'scenario'} {sc.seed}: "
                     f"{', '.join(_kind(f) for f in sc.faults) or 'clean'}")
    return ev
