"""`autogrid simulate`: no control vs rule-based control vs control with the scheduler.

Three lockstep runs of the same site, seed and days; a KPI table on stdout, progress on
stderr, one PNG of the power flows per run and the figures as JSON in the output folder.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import TextIO
from zoneinfo import ZoneInfo

from gateway.config.loader import LoadedConfig
from gateway.config.models import SiteConfig
from gateway.control.scheduler import scheduler_settings, site_tariff
from gateway.simulate.harness import RUN_TITLES, RUNS, ControllerFactory, Lockstep, RunResult
from gateway.simulate.kpi import Kpis, compute, table
from gateway.simulate.plot import save_plot
from sim_devices.settings import SimulationSettings, load_simulation_settings

HEADER_NOTE = "in-process lockstep; protocols are exercised by the integration tests"


def controller_factory() -> tuple[ControllerFactory, str]:
    """The site controller; without a ``control:`` section it runs its default strategies."""
    from gateway.control.controller import Controller

    def make(cfg: SiteConfig) -> Controller:
        return Controller(cfg)

    return make, "site controller (gateway.control.controller)"


def run_simulate(loaded: LoadedConfig, days: float, out_dir: Path, step_s: float,
                 out: TextIO, err: TextIO, runs: tuple[str, ...] = RUNS) -> int:
    cfg = loaded.config
    if not 0 < days <= 366:
        raise ValueError(f"--days must be between 0 and 366, found {days:g}")
    if not 1.0 <= step_s <= 900.0:
        raise ValueError(f"--step must be between 1 and 900 seconds, found {step_s:g}")
    settings = loaded.simulation or load_simulation_settings(cfg, loaded.source)
    make, ctl_name = controller_factory()
    tariff, tariff_src = site_tariff(cfg)
    sched = scheduler_settings(cfg)
    replan_s = max(sched.interval_s, sched.step_s)
    results: list[tuple[RunResult, Kpis]] = []
    t0 = time.perf_counter()
    for i, run in enumerate(runs, 1):
        print(f"run {i}/{len(runs)}: {RUN_TITLES[run]} ...", file=err, flush=True)
        ls = Lockstep(cfg, settings, run, days, step_s, make, replan_s,
                      progress=lambda line: print(line, file=err, flush=True))
        res = ls.execute()
        results.append((res, compute(res, cfg, tariff)))
        fb = f", {len(res.plans_fallback)} fallback plans" if res.plans_fallback else ""
        print(f"run {i}/{len(runs)}: {RUN_TITLES[run]} done in {res.wall_s:.1f} s{fb}",
              file=err, flush=True)
    start = results[0][0].start_s
    print(_header(cfg, settings, days, step_s, start, ctl_name, tariff_src, replan_s,
                  results), file=out)
    print(table(results, tariff.currency), file=out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for res, _ in results:
        path = save_plot(res, cfg, out_dir / f"simulate-{res.name}.png")
        print(f"plot: {path}", file=out)
    summary = {res.name: {**k.as_dict(), "wall_s": res.wall_s, "plans_ok": res.plans_ok,
                          "plans_fallback": res.plans_fallback} for res, k in results}
    (out_dir / "simulate-kpis.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"figures: {out_dir / 'simulate-kpis.json'} (total {time.perf_counter() - t0:.1f} s)",
          file=out)
    return 0


def _header(cfg: SiteConfig, settings: SimulationSettings, days: float, step_s: float,
            start_s: float, ctl_name: str, tariff_src: str, replan_s: float,
            results: list[tuple[RunResult, Kpis]]) -> str:
    tz = cfg.site.timezone
    start = datetime.fromtimestamp(start_s, ZoneInfo(tz))
    lines = [
        f"AutoGrid simulate: {cfg.site.name}",
        f"{days:g} day{'s' if days != 1 else ''} from {start:%Y-%m-%d %H:%M} {tz}, "
        f"control step {step_s:g} s, seed {settings.seed}",
        HEADER_NOTE,
        "cars report departure and wanted energy to the controller (as ISO 15118 cars do)",
        "net cost = energy cost - stored energy value: energy stored at the end minus at the "
        "start (batteries, cars still plugged in) at the cheapest import price, through the "
        "charge efficiency (what buying it back costs)",
        f"controller: {ctl_name}; protection (per-sample trips) is not in the lockstep loop",
        f"tariff: {tariff_src}",
    ]
    for res, _ in results:
        if res.name == "scheduler":
            fb = res.plans_fallback
            why = f" (first: {fb[0]})" if fb else ""
            lines.append(f"scheduler: LP every {replan_s / 60:g} min over 24 h, "
                         f"{res.plans_ok} optimal plans, {len(fb)} fallbacks{why}")
            if res.plan_solver:
                lines.append(f"last plan: {res.plan_solver}")
    return "\n".join(lines) + "\n"

