"""PNG of a run's power flows (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gateway.config.models import SiteConfig
from gateway.simulate.harness import RUN_TITLES, RunResult


def save_plot(run: RunResult, cfg: SiteConfig, path: Path) -> Path:
    """Grid, PV, load, battery and EV power over the run, limits dashed; battery SOC below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = run.trace.arrays()
    hours = (a["t"] - run.start_s) / 3600.0
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    ax.plot(hours, a["grid"], label="grid (+ import)", color="black", lw=1.2)
    ax.plot(hours, a["pv"], label="PV", color="orange", lw=1)
    ax.plot(hours, a["load"], label="loads", color="tab:brown", lw=1)
    ax.plot(hours, a["battery"], label="battery (+ discharge)", color="tab:green", lw=1)
    ax.plot(hours, a["ev"], label="EV (+ charge, - V2G)", color="tab:blue", lw=1)
    if np.any(a["shed"] > 0):
        ax.fill_between(hours, 0, a["shed"], color="tab:red", alpha=0.25, label="shed load")
    g = cfg.site.grid
    if g.import_limit_kw is not None:
        ax.axhline(g.import_limit_kw, color="red", ls="--", lw=0.8, label="import limit")
    if g.export_limit_kw is not None:
        ax.axhline(-g.export_limit_kw, color="purple", ls="--", lw=0.8, label="export limit")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_ylabel("kW")
    ax.set_title(f"{cfg.site.name}: {RUN_TITLES[run.name]}")
    ax.legend(loc="upper left", fontsize=7, ncol=4)
    ax.grid(alpha=0.3)
    ax2.plot(hours, a["soc"], color="tab:green", lw=1)
    ax2.set_ylabel("battery SOC %")
    ax2.set_ylim(0, 100)
    ax2.set_xlabel(f"hours since local midnight ({cfg.site.timezone})")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
