"""Detectors on held-out scenario families: precision, recall, false alarms, days to find.

    python bench/analytics_detect.py [--families held_out|tuning|all] [--trees 50]

The fixed split is in gateway/analytics/inject.py: thresholds were chosen looking only at
the tuning families; the held-out families (other seasons, weather and random draws)
are what the printed figures score. Targets: precision >= 0.9 and recall >= 0.85 per
device-day, <= 1 false alarm per 30 clean device-days per detector, a stuck signal found
on every day it stays stuck, soiling at 4 %/day found within 3 days.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from gateway.analytics.evaluation import Evaluation, evaluate  # noqa: E402
from gateway.analytics.inject import (  # noqa: E402
    HELD_OUT_FAMILIES,
    TUNING_FAMILIES,
    family_scenarios,
)
from gateway.config.loader import load_config  # noqa: E402

DEMO = Path(__file__).resolve().parent.parent / "site_configs" / "demo.yaml"


def report(ev: Evaluation, label: str) -> None:
    """Print the scores of one evaluation."""
    print(f"== detectors on {label}")
    print(ev.table().to_string())
    clean = ev.clean_device_days()
    print(f"device-days: precision {ev.precision:.2f}  recall {ev.recall:.2f}  "
          f"(targets 0.90 / 0.85); clean device-days {clean}")
    for det, n in ev.false_alarms().items():
        rate = 30.0 * n / clean if clean else float("nan")
        print(f"  false alarms {det:<18} {n:3d}  = {rate:.2f} per 30 device-days (target <= 1)")
    for (seed, dev), days in sorted(ev.days_to_detect().items()):
        f = ev.events[(seed, dev)]
        kind = f"{f.kind}:{f.signal}" if f.signal else f.kind
        print(f"  {seed} {dev:<11} {kind:<28} found after "
              f"{'never' if days is None else f'{days} day(s)'}")


def run(families: tuple[str, ...], trees: int, label: str) -> Evaluation:
    cfg = load_config(DEMO).config
    scs = [sc for fam in families for sc in family_scenarios(cfg, fam)]
    t = time.perf_counter()
    ev = evaluate(cfg, scs, forest_trees=trees)
    print(f"{len(scs)} scenarios ({', '.join(families)}) in {time.perf_counter() - t:.0f} s")
    report(ev, label)
    return ev


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", choices=["held_out", "tuning", "all"], default="held_out")
    ap.add_argument("--trees", type=int, default=50)
    args = ap.parse_args(argv)
    if args.families in ("tuning", "all"):
        run(TUNING_FAMILIES, args.trees, "the tuning families")
    if args.families in ("held_out", "all"):
        run(HELD_OUT_FAMILIES, args.trees, "the HELD-OUT families")


if __name__ == "__main__":
    main()
