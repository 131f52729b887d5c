"""`autogrid forecast`: train, backtest, print the metrics table, plot forecast vs actual."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd

from gateway.analytics import backtest
from gateway.analytics.cliargs import add_parser  # noqa: F401  (kept importable here)
from gateway.analytics.data import historian_targets, reference_year
from gateway.analytics.forecast import Forecaster, train
from gateway.analytics.models import KIND_NAMES
from gateway.analytics.site import SiteInfo
from gateway.config.models import SiteConfig


def load_frame(cfg: SiteConfig, info: SiteInfo, source: str, need_days: int
               ) -> tuple[pd.DataFrame, str]:
    """The history to learn from: the historian when it holds enough, else the reference year."""
    db = Path(cfg.historian.path)
    if source in ("auto", "historian") and db.is_file():
        frame = historian_targets(db, info)
        if len(frame) >= 96 * need_days:
            return frame, f"historian {db} ({len(frame) / 96:.0f} days)"
        if source == "historian":
            raise ValueError(f"{db}: {len(frame) / 96:.1f} days of history, the backtest "
                             f"needs {need_days}; use --source reference or fewer --days")
    elif source == "historian":
        raise FileNotFoundError(f"{db}: no historian database here")
    return reference_year(info), ("reference year: BDEW G25 load profile (demandlib, 60 MWh/a, "
                                  "holidays, 5 % noise + 5 % day-to-day), PV from the clear-sky "
                                  "index of pvlib's TMY3 year at the site's own sun through the "
                                  "simulator's PV model, and the simulator's synthetic day-ahead "
                                  "weather forecast")


def print_report(results: dict[str, backtest.BacktestResult], fc: Forecaster, days: int,
                 out: TextIO) -> None:
    """Per target: every candidate on the scored window, skill against the strongest naive
    method there, the candidate chosen on validation and what it falls back to."""
    with pd.option_context("display.width", 160, "display.max_columns", 10,
                           "display.float_format", "{:.2f}".format):
        for tg, res in results.items():
            w = res.scored
            which = (f"test window ({w.index[0]:%Y-%m-%d} .. {w.index[-1]:%Y-%m-%d}, not used "
                     f"to choose)" if res.test is not None else "validation window")
            print(f"\n== {tg}: day-ahead, rolling origin; chosen on {len(res.validation.actual)}"
                  f" validation quarter hours, scored on the {which}, {len(w.actual)} quarter "
                  f"hours ==", file=out)
            print(res.metrics.rename(columns={"skill_pct": "skill_vs_strongest_naive_pct"})
                  .to_string(), file=out)
            naive = w.strongest_naive()
            best = res.metrics.loc[KIND_NAMES[res.best]]
            line = (f"chosen: {KIND_NAMES[res.best]} | nMAE {best['nmae_pct']:.1f} % | skill vs "
                    f"the strongest naive method ({naive}) {best['skill_pct']:+.1f} %"
                    f" | p10..p90 band holds {100 * res.coverage:.0f} % of actuals")
            print(line, file=out)
            if res.note:
                print(f"note: {res.note}", file=out)
            if res.fallback != res.best:
                fb = KIND_NAMES[res.fallback]
                skill = 100.0 * (1.0 - w.mae(res.fallback) / w.mae(naive))
                print(f"without a weather forecast: {fb} (skill {skill:+.1f} %)", file=out)


def plot(results: dict[str, backtest.BacktestResult], info: SiteInfo, path: Path,
         days: int = 7) -> Path:
    """PNG of the last ``days`` scored: actual, chosen p50, its p10..p90 band, best naive."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(12, 3.2 * len(results)), squeeze=False)
    for ax, (tg, res) in zip(axes[:, 0], results.items(), strict=True):
        w = res.scored
        sel = w.index >= w.index[-1] - pd.Timedelta(days=days)
        t = w.index[sel].tz_convert(info.timezone)
        p = w.preds[res.best][sel]
        h = t.hour.to_numpy()
        lo = np.maximum(p + res.resid_q[h, 0], 0.0)
        hi = p + res.resid_q[h, 1]
        ax.fill_between(t, lo, hi, color="tab:blue", alpha=0.2, label="p10..p90")
        ax.plot(t, w.actual[sel], color="black", lw=1.0, label="actual")
        ax.plot(t, p, color="tab:blue", lw=1.2, label=f"forecast ({res.best})")
        naive = w.strongest_naive()
        ax.plot(t, w.preds[naive][sel], color="tab:orange", lw=0.8, ls="--", label=naive)
        ax.set_ylabel(f"{tg} kW")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(cfg: SiteConfig, source: str = "auto", days: int = 28, retrain_days: int = 14,
        n_trees: int = 100, plot_path: Path | None = None, model_dir: Path | None = None,
        out: TextIO = sys.stdout, progress: bool = True, val_days: int = 28) -> Forecaster:
    """Choose on ``val_days`` of validation, score once on the last ``days`` (the test)."""
    from tqdm import tqdm  # type: ignore[import-untyped]

    from gateway.analytics.site import site_info

    info = site_info(cfg)
    frame, what = load_frame(cfg, info, source, days + val_days + 3)
    print(f"data: {what}", file=out)
    n_folds = -(-days // retrain_days) + -(-val_days // retrain_days)
    kinds = 4 if any(backtest.has_weather(frame, t) for t in info.targets) else 2
    total = len([t for t in info.targets if f"{t}_kw" in frame]) * (n_folds * kinds + 1)
    results: dict[str, backtest.BacktestResult] = {}
    version = 1
    if model_dir is not None:
        last = Forecaster.load_latest(model_dir)
        version = last.version + 1 if last else 1
    tqdm.monitor_interval = 0  # no monitor thread: the bar lives as long as the command
    with tqdm(total=total, desc="train + backtest", unit="fit", disable=not progress,
              file=sys.stderr) as bar:
        fc = train(frame, info, version=version, n_trees=n_trees, n_jobs=-1,
                   backtest_days=val_days, retrain_days=retrain_days,
                   tick=lambda: bar.update(1), results=results, test_days=days)
    print_report(results, fc, days, out)
    if model_dir is not None:
        print(f"model: {fc.save(model_dir)} (v{fc.version}, trained on "
              f"{fc.window[0]} .. {fc.window[1]})", file=out)
    if plot_path is not None:
        print(f"plot: {plot(results, info, plot_path)}", file=out)
    return fc


def cmd_forecast(args: Any) -> int:
    from gateway.config.loader import load_config

    if args.days < 7 or args.val_days < 7 or args.retrain_days < 1 or args.trees < 1:
        raise ValueError("--days and --val-days must be >= 7, --retrain-days and --trees >= 1")
    cfg = load_config(args.config).config
    run(cfg, args.source, args.days, args.retrain_days, args.trees,
        Path(args.plot) if args.plot else None,
        Path(args.model_dir) if args.model_dir else None, progress=not args.no_progress,
        val_days=args.val_days)
    return 0
