"""Analytics cost: training on a year of 15-minute data, inference, and event-loop jitter.

    python bench/analytics.py [--trees 100] [--cycle-ms 20] [--seconds 0]

1. Reference year (BDEW G25 load + TMY PV through the simulator) for the demo site.
2. Training: every candidate backtested on a 28-day validation window (chooses), then
   scored once on the last 28 days (test), retrain every 14 days; the printed skill is
   on the test window against the strongest naive method. Load also for BDEW H25, G25
   and P25 with weather-driven heating, holidays and level steps.
3. Inference: Forecaster.predict for 24 h at 15 min, mean of 20 calls.
4. Event-loop cycle jitter: a task that wants to run every --cycle-ms measures how late
   each wake-up is, first with nothing else (baseline), then while the same training
   runs in the analytics worker thread. Printed: p50/p99/max lateness and the ratio of
   p99 with training to p99 without (both measured in this run).
5. Anomaly detectors on the held-out scenario families (bench/analytics_detect.py):
   precision, recall, false alarms per detector, days to find each fault.
6. Intraday PV (15 min .. 6 h ahead, from the latest measured clear-sky index) against
   clear-sky persistence at 1, 2 and 3 h, with and without the day-ahead weather
   forecast: method (linear per lead, boosted trees, their mean) and fitting span chosen
   on validation weeks, skill on test weeks
   (``--intraday-only`` runs just this part).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

# The repo instead of bench/ on the path (the worker process inherits sys.path).
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from gateway.analytics.data import reference_year  # noqa: E402
from gateway.analytics.forecast import Forecaster, train  # noqa: E402
from gateway.analytics.service import AnalyticsService  # noqa: E402
from gateway.analytics.site import site_info  # noqa: E402
from gateway.config.loader import load_config  # noqa: E402

DEMO = Path(__file__).resolve().parent.parent / "site_configs" / "demo.yaml"


async def _cycles(period_s: float, stop: asyncio.Event, seconds: float | None) -> list[float]:
    """Lateness (ms) of each periodic wake-up until ``stop`` is set (or seconds pass)."""
    late: list[float] = []
    t0 = time.perf_counter()
    nxt = t0 + period_s
    while not stop.is_set() and (seconds is None or time.perf_counter() - t0 < seconds):
        await asyncio.sleep(max(0.0, nxt - time.perf_counter()))
        now = time.perf_counter()
        late.append((now - nxt) * 1000.0)
        nxt += period_s
        if now > nxt:  # a missed cycle is not made up in a burst
            nxt = now + period_s
    return late


def _stats(x: list[float]) -> str:
    a = np.asarray(x)
    return (f"n={len(a):5d}  p50 {np.percentile(a, 50):6.2f} ms  p99 {np.percentile(a, 99):6.2f}"
            f" ms  max {a.max():7.2f} ms")


# Load cases: weather-driven heating, holidays (in the profile) and level steps. G25 is the
# profile the code was developed on; H25 and P25 were never looked at while tuning.
_LOAD_CASES = (("H25", 25.0, (("2025-09-15", 1.25),)), ("G25", 10.0, (("2025-10-01", 0.8),)),
               ("P25", 20.0, (("2025-11-01", 1.3),)))


def _print_skill(what: str, r: object) -> None:
    """Test-window skill of every candidate against the strongest naive method."""
    from gateway.analytics.backtest import BacktestResult
    from gateway.analytics.models import KIND_NAMES

    assert isinstance(r, BacktestResult)
    w = r.scored
    print(f"  {what}: chosen on validation {KIND_NAMES[r.best]}; test skill vs strongest "
          f"naive ({w.strongest_naive()}): " + "; ".join(
              f"{name} {row['skill_pct']:+.1f} %" for name, row in r.metrics.iterrows()))
    if r.note:
        print(f"    {r.note}")


def fit_reference(trees: int, version: int) -> Forecaster:
    """The training job in the worker process (rebuilds the reference year there)."""
    info = site_info(load_config(DEMO).config)
    return train(reference_year(info), info, version=version, n_trees=trees)


async def _jitter(info: object, trees: int, period_s: float, tmp: Path, worker: str
                  ) -> tuple[list[float], list[float], float]:
    import functools

    svc = AnalyticsService(info, tmp, None,  # type: ignore[arg-type]
                           train_fn=functools.partial(fit_reference, trees), worker=worker)
    await svc.start()
    try:
        t0 = time.perf_counter()
        stop = asyncio.Event()
        train_task = asyncio.create_task(svc.train_now())
        train_task.add_done_callback(lambda _t: stop.set())
        busy = await _cycles(period_s, stop, None)
        ok = await train_task
        took = time.perf_counter() - t0
        if not ok:
            raise SystemExit(f"training failed: {svc.last_error}")
        base = await _cycles(period_s, asyncio.Event(), min(took, 30.0))  # same loop, idle
    finally:
        await svc.stop()
    return base, busy, took


def print_intraday(frame: pd.DataFrame, info: object) -> None:
    """Intraday PV skill over clear-sky persistence on validation and test weeks."""
    from gateway.analytics import intraday

    print("intraday PV vs clear-sky persistence (interleaved weeks: fit, validation, fit, "
          "test; each week forecast with coefficients fitted on the weeks before it):")
    for weather in (True, False):
        t = time.perf_counter()
        r = intraday.evaluate(frame, info, weather=weather)  # type: ignore[arg-type]
        what = "with the day-ahead weather forecast" if weather else "without weather"
        print(f"  {what}: method {r.method}, fitted on {r.span_weeks} weeks, "
              f"persistence window {r.baseline_window * 15} min (its best); "
              f"{r.test_pairs} test pairs; {time.perf_counter() - t:.1f} s")
        print("    validation 1-3 h skill of each candidate: " + ", ".join(
            f"{k} {v:+.1f} %" for k, v in (r.val_by_method or {}).items()))
        for name, test in (("validation", False), ("test", True)):
            print(f"    {name:10s} skill " + ", ".join(
                f"{h} h {r.skill(h, test):+.1f} %" for h in (1, 2, 3))
                  + f"; 1-3 h {r.skill_between(1, 3, test):+.1f} %; 6 h "
                  f"{r.skill(6, test):+.1f} %")
        mae = r.test_mae[[3, 7, 11]]
        base = r.test_base[[3, 7, 11]]
        print("    test MAE kW at 1/2/3 h: model " + " / ".join(f"{v:.2f}" for v in mae)
              + ", persistence " + " / ".join(f"{v:.2f}" for v in base))
        if r.note:
            print(f"    {r.note}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--intraday-only", action="store_true",
                    help="only the intraday PV evaluation (part 6)")
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--cycle-ms", type=float, default=20.0)
    ap.add_argument("--worker", action="append", choices=["process", "thread"],
                    help="where training runs (repeatable; default: process, then thread)")
    args = ap.parse_args()
    args.worker = args.worker or ["process", "thread"]
    cfg = load_config(DEMO).config
    info = site_info(cfg)
    t = time.perf_counter()
    frame = reference_year(info)
    print(f"reference year: {len(frame)} quarter hours generated in "
          f"{time.perf_counter() - t:.1f} s")
    if args.intraday_only:
        print_intraday(frame, info)
        return

    from gateway.analytics import backtest

    res: dict[str, backtest.BacktestResult] = {}
    t = time.perf_counter()
    fc = train(frame, info, n_trees=args.trees, backtest_days=28, retrain_days=14, results=res,
               test_days=28)
    train_s = time.perf_counter() - t
    print(f"training (validation 28 d + test 28 d, every candidate, {args.trees} trees, "
          f"1 core): {train_s:.1f} s")
    for tg, r in res.items():
        _print_skill(f"{tg} (G25 + TMY)", r)
    for profile, heat, steps in _LOAD_CASES:
        ref = reference_year(info, profile=profile, heating_pct=heat, steps=steps, seed=7)
        r = backtest.evaluate(ref, info, "load", 28, 28, 14, n_trees=args.trees)
        _print_skill(f"load {profile} (+{heat:.0f} % heating, steps {steps})", r)
    times = []
    for _ in range(20):
        t = time.perf_counter()
        fc.predict(horizon=pd.Timedelta(hours=24))
        times.append(time.perf_counter() - t)
    print(f"inference: predict 24 h x 15 min, {len(fc.models)} targets: "
          f"{1000 * statistics.mean(times):.1f} ms mean, {1000 * max(times):.1f} ms max")

    import tempfile

    print(f"event loop, {args.cycle_ms:.0f} ms cycle, lateness of each wake-up:")
    for worker in args.worker:
        with tempfile.TemporaryDirectory() as tmp:
            base, busy, took = asyncio.run(_jitter(info, args.trees, args.cycle_ms / 1000.0,
                                                   Path(tmp), worker))
        print(f"  [{worker}] baseline (idle)       {_stats(base)}")
        print(f"  [{worker}] training in worker    {_stats(busy)}  (training took {took:.1f} s)")
        r99 = np.percentile(busy, 99) / max(np.percentile(base, 99), 1e-3)
        rmax = max(busy) / max(max(base), 1e-3)
        print(f"  [{worker}] ratio training/baseline: p99 {r99:.2f}, max {rmax:.2f}")

    import bench.analytics_detect as detect  # the detectors on the held-out families

    detect.main(["--families", "held_out"])
    print_intraday(frame, info)


if __name__ == "__main__":
    main()
