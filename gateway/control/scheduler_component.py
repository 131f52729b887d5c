"""The scheduler as a daemon component: re-plans every ``scheduler.interval_s`` off the
event loop and hands the plan to the site controller (``controller.plan``).

On when the config has a ``scheduler:`` section (enabled) or a ``tariff:`` (then with the
default settings); without a tariff there is nothing to optimise against. The snapshot of
the site is taken on the loop; forecast and LP run in a worker thread. The site's load and
PV are sampled every minute into the simple forecaster's history; the analytics
forecaster is used instead when that component has a trained model. API: ``plan``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway.aio import cancel_and_wait
from gateway.api import ApiError
from gateway.control.forecast_simple import Forecast
from gateway.control.scheduler import Scheduler, plan_summary
from gateway.control.scheduler_lp import EvInput, SolveResult

if TYPE_CHECKING:
    from gateway.daemon import Daemon
    from gateway.ports import ControllerPort

log = logging.getLogger("autogrid.scheduler")
SAMPLE_S = 60.0


class SchedulerComponent:
    name = "scheduler"

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.scheduler = Scheduler(daemon.cfg, forecast_fn=self._analytics_forecast)
        self.last: SolveResult | None = None
        self.runs = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # --- wiring to the other components (typed ports, read when used) --------------------
    def controller(self) -> ControllerPort | None:
        return self.daemon.ports.controller

    def _analytics_forecast(self, start_s: float, step_s: float, n: int, now_s: float,
                            load_now: float | None, pv_now: float | None) -> Forecast:
        source = self.daemon.ports.forecasts
        fc = source.forecaster if source is not None else None
        if fc is None:
            raise LookupError("no trained analytics model yet")
        import pandas as pd

        start = pd.Timestamp(start_s, unit="s", tz="UTC")
        out = fc.predict(start, pd.Timedelta(seconds=n * step_s), pd.Timedelta(seconds=step_s))
        load = np.asarray(out["load"]["p50"].to_numpy(dtype=float)[:n], dtype=float)
        if len(load) != n:
            raise LookupError(f"analytics forecast has {len(load)} of {n} steps")
        if "pv" in out:
            pv = np.asarray(out["pv"]["p50"].to_numpy(dtype=float)[:n], dtype=float)
            method = f"analytics model v{fc.version}"
        else:
            pv = self.scheduler.simple.forecast(start_s, step_s, n, now_s, load_now,
                                                pv_now).pv_kw
            method = f"analytics model v{fc.version} (load), clear-sky PV"
        return Forecast(load, pv, method)

    # --- life cycle ---------------------------------------------------------------------
    async def start(self) -> None:
        api = self.daemon.api
        if api is not None:
            api.register("plan", self._api_plan, role="viewer", replace=True,
                         help="the scheduler's latest plan: status, cost, steps")
            api.register("replan", self._api_replan, role="operator",
                         help="plan again now (returns the new plan's status)")
        self._task = asyncio.create_task(self._loop(), name="scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None

    async def _loop(self) -> None:
        st = self.scheduler.settings
        next_plan = time.time()
        while True:
            now = time.time()
            self.scheduler.observe(self.daemon.state, now)
            if not self._leads():  # another gateway's controller follows its own plan
                self._wake.clear()
            elif now >= next_plan or self._wake.is_set():
                self._wake.clear()
                await self.replan()
                next_plan = time.time() + st.interval_s
            delay = max(0.0, min(SAMPLE_S, next_plan - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def replan(self) -> SolveResult:
        """Snapshot now (on the loop), forecast + solve in a thread, hand to the controller."""
        now = time.time()
        sch = self.scheduler
        snap = sch.snapshot(self.daemon.state, now)
        ctl = self.controller()
        book = ctl.sessions if ctl is not None else None
        evs: list[EvInput] = (sch.sessions_from(book.active.values(), now)
                              if book is not None else [])

        def work() -> SolveResult:
            problem, method = sch.problem(snap, evs)
            return sch.solve(problem, method, now)

        res = await asyncio.to_thread(work)
        self.last = res
        self.runs += 1
        if ctl is not None:
            ctl.plan = res.plan
        return res

    # --- API ----------------------------------------------------------------------------
    def _api_plan(self, request: dict[str, Any], caller: Any) -> dict[str, Any]:
        out = plan_summary(self.last, time.time())
        out["runs"] = self.runs
        out["tariff"] = self.scheduler.tariff_source
        out["controller"] = "tracking" if self.controller() is not None else (
            "none: the plan is computed but nothing follows it (no control: section)")
        return out

    def _leads(self) -> bool:
        """In a cluster only the leader plans (its controller is the one that runs)."""
        cluster = self.daemon.ports.cluster
        return cluster is None or cluster.leading()

    async def _api_replan(self, request: dict[str, Any], caller: Any) -> dict[str, Any]:
        if not self._leads():
            cluster = self.daemon.ports.cluster
            leader = cluster.leader_id() if cluster is not None else None
            raise ApiError(f"this gateway does not plan; the cluster leader is "
                           f"{leader or 'not elected'}: send the command there")
        res = await self.replan()
        return {"status": res.plan.status, "solve_ms": round(res.solve_ms, 1)}


def build(daemon: Daemon) -> SchedulerComponent | None:
    cfg = daemon.cfg
    st = cfg.scheduler
    if st is not None and not st.enabled:
        return None
    if st is None and cfg.tariff is None:
        return None
    return SchedulerComponent(daemon)
