"""Analytics in the daemon: training off the event loop, on a schedule and on demand.

Training (forecast models) and detection read the historian in a worker thread; the
event loop only starts the work and swaps in the result. A model is saved with its
version and training window; a failed training keeps the last good model and raises an
``Anomaly`` (device ``analytics``) that the alarm list shows. The anomaly detectors run in
the worker thread every ``detect_interval_s`` and on demand (gateway.analytics.detect); with
the control component present every anomaly is also a control alarm (``AlarmBridge``).
API commands: ``forecast``, ``anomalies``, ``battery_health``, ``analytics_train``,
``analytics_detect``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import inspect
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from gateway.aio import cancel_and_wait
from gateway.analytics.anomaly import Anomaly, AnomalyModel
from gateway.analytics.config import AnalyticsSettings
from gateway.analytics.data import historian_targets
from gateway.analytics.detect import (
    AlarmBridge,
    Detection,
    detect_job,
    historian_span,
    worst_per_signal,
)
from gateway.analytics.forecast import Forecaster, train
from gateway.analytics.site import SiteInfo

if TYPE_CHECKING:
    from gateway.daemon import Daemon

log = logging.getLogger("autogrid.analytics")

TrainFn = Callable[[int], Forecaster]


def train_from_historian(db_path: Path | None, info: SiteInfo, n_trees: int,
                         version: int) -> Forecaster:
    """The daemon's training job: 15-minute targets from the historian, both kinds, best kept."""
    if db_path is None:
        raise ValueError("the historian is disabled: nothing to train on")
    frame = historian_targets(db_path, info)
    return train(frame, info, version=version, n_trees=n_trees)


def _job(train_fn: TrainFn, version: int, model_dir: Path) -> Path:
    """Runs in the worker process: train, save, return the model file (not the model)."""
    with contextlib.suppress(OSError):
        os.nice(10)  # the gateway's own loop comes first
    return train_fn(version).save(model_dir)


def _load(path: Path) -> Forecaster:
    fc = Forecaster.load_latest(path.parent)
    if fc is None:
        raise ValueError(f"{path}: the trained model does not load")
    return fc


class AnalyticsService:
    name = "analytics"

    def __init__(self, info: SiteInfo, model_dir: Path, db_path: Path | None,
                 retrain_interval_s: float = 86400.0, n_trees: int = 100,
                 train_fn: TrainFn | None = None, worker: str = "process",
                 settings: AnalyticsSettings | None = None) -> None:
        self.info = info
        self.settings = settings or AnalyticsSettings(retrain_interval_s=retrain_interval_s)
        self.alarms: AlarmBridge | None = None  # set by build() when `control` is present
        self.last_detection: Detection | None = None
        self.detecting: asyncio.Task[Detection | None] | None = None
        self._fitted: tuple[tuple[float, float], AnomalyModel] | None = None
        self._active: dict[tuple[str, str, str], Anomaly] = {}
        self._detect_schedule: asyncio.Task[None] | None = None
        self.daemon: Daemon | None = None  # set by build(): its ports (alarms)
        self.model_dir = model_dir
        self.baseline: tuple[float, float] | None = self._load_baseline()
        self.db_path = db_path
        self.retrain_interval_s = retrain_interval_s
        self.n_trees = n_trees
        # A process by default: training holds the GIL for long stretches (pandas, Python
        # loops), which stalls the event loop by 100s of ms from a thread (bench/analytics.py).
        self.train_fn: TrainFn = train_fn or functools.partial(
            train_from_historian, db_path, info, n_trees)
        self.worker = worker
        self._proc: ProcessPoolExecutor | None = None
        self.forecaster: Forecaster | None = None
        self.anomalies: collections.deque[Anomaly] = collections.deque(maxlen=500)
        self.training: asyncio.Task[bool] | None = None
        self.last_error: str | None = None
        self.health: dict[str, Any] = {}
        self._schedule: asyncio.Task[None] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="analytics")

    async def start(self) -> None:
        # Anomalies become alarms where the daemon runs the alarm service (with `control:`).
        store = self.daemon.ports.alarms if self.daemon is not None else None
        if store is not None:
            self.alarms = AlarmBridge(store)
        self.forecaster = await asyncio.get_running_loop().run_in_executor(
            self._pool, Forecaster.load_latest, self.model_dir)
        self._schedule = asyncio.create_task(self._every(), name="analytics schedule")
        if self.settings.detect and self.db_path is not None:
            self._detect_schedule = asyncio.create_task(self._detect_every(),
                                                        name="analytics detectors")

    async def stop(self) -> None:
        tasks = [t for t in (self._schedule, self._detect_schedule, self.training,
                             self.detecting) if t is not None]
        await cancel_and_wait(tasks)
        if self._proc is not None:
            await asyncio.to_thread(self._proc.shutdown, wait=True, cancel_futures=True)
            self._proc = None
        self._pool.shutdown(wait=True)

    async def _every(self) -> None:
        while True:
            await asyncio.sleep(self.retrain_interval_s)
            await self.train_now()

    def request_training(self) -> bool:
        """Start a training unless one runs; True if started."""
        if self.training is not None and not self.training.done():
            return False
        self.training = asyncio.create_task(self.train_now(), name="analytics training")
        return True

    async def train_now(self) -> bool:
        """Train in the worker thread; on failure keep the last good model and raise an alarm."""
        version = (self.forecaster.version + 1) if self.forecaster else 1
        t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        job = functools.partial(_job, self.train_fn, version, self.model_dir)
        try:
            if self.worker == "process":
                if self._proc is None:
                    self._proc = ProcessPoolExecutor(
                        max_workers=1, mp_context=multiprocessing.get_context("spawn"))
                path = await loop.run_in_executor(self._proc, job)
            else:
                path = await loop.run_in_executor(self._pool, job)
            fc = await loop.run_in_executor(self._pool, _load, path)
        except Exception as exc:  # any failure of the model code must not reach the loop
            kept = f"keeping model v{self.forecaster.version}" if self.forecaster else (
                "no forecast until a training succeeds")
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("forecast training failed (%s): %s", kept, self.last_error)
            failed = Anomaly("analytics", "forecast_training", 1.0,
                             f"forecast training v{version} failed: {self.last_error}; {kept}",
                             datetime.now(UTC).isoformat(), "training")
            self.anomalies.append(failed)
            if self.alarms is not None:
                self.alarms.sync([failed], {"training"})
            return False
        if self.alarms is not None:
            self.alarms.sync([], {"training"})
        self.forecaster = fc
        self.last_error = None
        log.info("forecast model v%d trained in %.1f s (window %s .. %s)", fc.version,
                 time.monotonic() - t0, *fc.window)
        return True

    # -- anomaly detectors ------------------------------------------------------------------
    def _baseline_file(self) -> Path:
        return self.model_dir / "anomaly_baseline.json"

    def _load_baseline(self) -> tuple[float, float] | None:
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            d = json.loads(self._baseline_file().read_text())
            return float(d["start_s"]), float(d["end_s"])
        return None

    def _save_baseline(self, span: tuple[float, float]) -> None:
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self._baseline_file().write_text(json.dumps({"start_s": span[0], "end_s": span[1]}))

    async def _detect_every(self) -> None:
        while True:
            await asyncio.sleep(self.settings.detect_interval_s)
            await self.request_detection()

    async def request_detection(self, rebaseline_s: float | None = None) -> Detection | None:
        """Run the detectors now (or join the run in progress); None while still learning."""
        if self.detecting is None or self.detecting.done():
            self.detecting = asyncio.create_task(self.detect_now(rebaseline_s),
                                                 name="analytics detection")
        return await asyncio.shield(self.detecting)

    async def detect_now(self, rebaseline_s: float | None = None) -> Detection | None:
        """One detection run in the worker thread; anomalies -> list and alarms."""
        assert self.db_path is not None
        loop = asyncio.get_running_loop()
        span = await loop.run_in_executor(self._pool, historian_span, self.db_path)
        if span is None:
            return None
        until = min(time.time(), span[1])
        if rebaseline_s is not None:  # an operator says: the last rebaseline_s were normal
            self.baseline = (max(span[0], until - rebaseline_s), until)
            self._save_baseline(self.baseline)
        elif self.baseline is None:
            if until - span[0] < self.settings.baseline_s:
                return None  # still learning what normal looks like
            self.baseline = (span[0], span[0] + self.settings.baseline_s)
            self._save_baseline(self.baseline)
        s = self.settings
        try:
            det, self._fitted = await loop.run_in_executor(self._pool, functools.partial(
                detect_job, self.db_path, self.info, self.baseline, until, s.window_s,
                s.step_s, s.forest_trees, self._fitted))
        except Exception:  # the detectors' code must not reach the loop
            log.exception("anomaly detection failed")
            return None
        self._publish(det)
        return det

    def _publish(self, det: Detection) -> None:
        self.last_detection = det
        current = worst_per_signal(det.anomalies)
        for key, a in current.items():
            if key not in self._active:  # a new anomaly: once in the list
                self.anomalies.append(a)
                log.warning("anomaly: %s %s (%s, score %.2f): %s", a.device, a.signal,
                            a.detector, a.score, a.explanation)
        self._active = current
        if self.alarms is not None:
            names = {d.name for d in self._fitted[1].detectors} if self._fitted else set()
            self.alarms.sync(det.anomalies, names)

    # -- API -------------------------------------------------------------------------------
    async def api_forecast(self, req: dict[str, Any]) -> Any:
        """The latest model's forecast (computed in the worker thread: ~0.1-0.3 s)."""
        fc = self.forecaster
        if fc is None:
            return {"available": False, "error": self.last_error}
        hours = float(req.get("horizon_h", 24))
        step = float(req.get("step_min", 15))
        if not (0 < hours <= 168 and 1 <= step <= 1440):
            raise ValueError("horizon_h must be in (0, 168] and step_min in [1, 1440]")
        pred = await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(
            fc.predict, horizon=pd.Timedelta(hours=hours), step=pd.Timedelta(minutes=step)))
        return {"available": True, **fc.meta(),
                "forecast": {t: {"time": [i.isoformat() for i in df.index],
                                 **{c: [round(float(v), 3) for v in df[c]] for c in df}}
                             for t, df in pred.items()}}

    def api_anomalies(self, req: dict[str, Any]) -> Any:
        limit = int(req.get("limit", 100))
        return [a.as_dict() for a in list(self.anomalies)[-limit:]]

    async def api_battery_health(self, req: dict[str, Any]) -> Any:
        """Per battery: SOH by coulomb counting, resistance, trend (computed in the worker)."""
        if self.db_path is None or not self.db_path.is_file():
            return {"batteries": list(self.info.bess_ids), "reports": self.health}
        self.health = await asyncio.get_running_loop().run_in_executor(
            self._pool, self._health_from_historian)
        return {"batteries": list(self.info.bess_ids), "reports": self.health}

    def _health_from_historian(self) -> dict[str, Any]:
        from gateway.analytics.battery_health import assess
        from gateway.analytics.data import historian_device_frame

        assert self.db_path is not None
        out: dict[str, Any] = {}
        for dev in self.info.bess_ids:
            df = historian_device_frame(self.db_path, dev, ["i_dc_a", "soc_pct", "v_dc_v",
                                                            "capacity_kwh"])
            if df.empty or not {"i_dc_a", "soc_pct", "v_dc_v"} <= set(df.columns):
                out[dev] = {"device": dev, "error": "no battery telemetry in the historian yet"}
                continue
            out[dev] = assess(dev, df, self.info.bess_kwh.get(dev, 100.0)).as_dict()
        return out

    def api_train(self, req: dict[str, Any]) -> Any:
        return {"started": self.request_training()}

    async def api_detect(self, req: dict[str, Any]) -> Any:
        """Run the detectors now; {"rebaseline": true, "baseline_s"?} first learns normal
        from the last baseline_s (default: the configured baseline) of telemetry."""
        if self.db_path is None:
            raise ValueError("the historian is disabled: nothing to check")
        re_s: float | None = None
        if req.get("rebaseline"):
            re_s = float(req.get("baseline_s", self.settings.baseline_s))
            if re_s <= 0:
                raise ValueError("baseline_s must be > 0")
        det = await self.request_detection(re_s)
        if det is None:
            return {"status": "learning", "baseline": self.baseline,
                    "baseline_s": self.settings.baseline_s}
        return {"status": "checked", "baseline": list(det.baseline),
                "checked": list(det.checked) if det.checked else None,
                "devices": det.devices, "alarms": self.alarms is not None,
                "anomalies": [a.as_dict() for a in worst_per_signal(det.anomalies).values()]}

    def commands(self) -> dict[str, Callable[[dict[str, Any]], Any]]:  # may return awaitables
        return {"forecast": self.api_forecast, "anomalies": self.api_anomalies,
                "battery_health": self.api_battery_health, "analytics_train": self.api_train,
                "analytics_detect": self.api_detect}


def build(daemon: Daemon) -> AnalyticsService | None:
    """Daemon component: on when the historian is (it is what analytics learns from)."""
    from gateway.analytics.site import site_info

    cfg = daemon.cfg
    settings = cfg.analytics or AnalyticsSettings()
    if not cfg.historian.enabled or daemon.api is None or not settings.enabled:
        return None
    db = Path(cfg.historian.path)
    svc = AnalyticsService(site_info(cfg), db.parent / "models", db,
                           retrain_interval_s=settings.retrain_interval_s,
                           settings=settings)
    svc.daemon = daemon
    daemon.ports.forecasts = svc  # the scheduler reads ``forecaster`` through this port
    help_ = {"forecast": "load/PV forecast p50/p10/p90: {horizon_h?, step_min?}",
             "anomalies": "recent anomaly alarms: {limit?}",
             "battery_health": "SOH, resistance and remaining life per battery",
             "analytics_train": "retrain the forecast models now (in the background)",
             "analytics_detect": "run the anomaly detectors now: {rebaseline?, baseline_s?}"}
    for name, fn in svc.commands().items():
        daemon.api.register(name, _adapt(fn), role="operator" if name in (
            "analytics_train", "analytics_detect") else "viewer", help=help_[name])
    return svc


def _adapt(fn: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any], Any], Any]:
    async def handler(req: dict[str, Any], caller: Any) -> Any:
        try:
            out = fn(req)
            return await out if inspect.isawaitable(out) else out
        except ValueError as exc:
            from gateway.api import ApiError

            raise ApiError(str(exc)) from None
    return handler
