"""Analytics in the daemon: training off the event loop, on a schedule and on demand.

Training (forecast models) and detection read the historian in a worker thread; the
event loop only starts the work and swaps in the result. A model is saved with its
version and training window; a failed training keeps the last good model and raises a
training alarm of its own (source ``analytics.training``, not an anomaly), cleared by the
next successful training or when an operator acknowledges it. The anomaly detectors run in
the worker thread every ``detect_interval_s`` and on demand (gateway.analytics.detect); with
the control component present every anomaly is also a control alarm (``AlarmBridge``).
API commands: ``forecast``, ``anomalies``, ``battery_health``, ``analytics_train``,
``analytics_training``, ``analytics_detect``.
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
from collections.abc import Callable, Iterator
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
from gateway.analytics.weather_feed import WeatherFeed

if TYPE_CHECKING:
    from gateway.daemon import Daemon

log = logging.getLogger("autogrid.analytics")
TRAINING_SOURCE = "analytics.training"  # alarm source of a failed forecast training
TRAINING_CONDITION = "forecast"
HEALTH_WINDOW_S = 30 * 86400.0  # battery health rests on the last 30 days of telemetry
OBSERVE_S = 900.0  # how often the latest measurements reach the forecaster (intraday PV)
OBSERVE_SPAN_S = 2 * 86400.0  # how much recent history each of those reads takes

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
        # the latest training run: run number, state (idle/running/succeeded/failed), ...
        self.training_status: dict[str, Any] = {"run": 0, "state": "idle"}
        self.health: dict[str, Any] = {}
        self._schedule: asyncio.Task[None] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="analytics")
        wf = self.settings.weather_feed
        self.feed: WeatherFeed | None = WeatherFeed(
            wf.source, wf.refresh_s, wf.max_age_s, timeout_s=wf.timeout_s) if wf else None
        self._feed_task: asyncio.Task[None] | None = None
        self._observe_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Anomalies and training failures become alarms where the daemon runs the alarm
        # service (with `control:`).
        store = self.daemon.ports.alarms if self.daemon is not None else None
        if store is not None:
            self.attach_alarms(store)
        self._use(await asyncio.get_running_loop().run_in_executor(
            self._pool, Forecaster.load_latest, self.model_dir))
        self._schedule = asyncio.create_task(self._every(), name="analytics schedule")
        if self.feed is not None:  # fetches in a thread of its own, never on the loop
            self._feed_task = asyncio.create_task(self.feed.run(), name="weather forecast")
        if self.db_path is not None:
            self._observe_task = asyncio.create_task(self._observe_every(),
                                                     name="analytics observe")
        if self.settings.detect and self.db_path is not None:
            self._detect_schedule = asyncio.create_task(self._detect_every(),
                                                        name="analytics detectors")

    def attach_alarms(self, store: Any) -> None:
        """Raise anomalies and training failures as alarms in ``store`` (a ControlStore)."""
        self.alarms = AlarmBridge(store)
        store.listeners.append(self._on_alarm)
        # Older versions raised a failed training as an anomaly alarm that nothing cleared.
        store.clear("analytics/training", "analytics:forecast_training")

    async def stop(self) -> None:
        tasks = [t for t in (self._schedule, self._detect_schedule, self.training,
                             self.detecting, self._feed_task, self._observe_task)
                 if t is not None]
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
        self.training_status = {"run": self.training_status["run"] + 1, "state": "running",
                                "started_at": datetime.now(UTC).isoformat()}
        self.training = asyncio.create_task(self.train_now(), name="analytics training")
        return True

    async def train_now(self) -> bool:
        """Train in the worker; on failure keep the last good model and raise the training
        alarm (with the reason), on success clear it."""
        if self.training_status.get("state") != "running":  # the schedule calls this directly
            self.training_status = {"run": self.training_status["run"] + 1, "state": "running",
                                    "started_at": datetime.now(UTC).isoformat()}
        version = (self.forecaster.version + 1) if self.forecaster else 1
        t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        job = functools.partial(_job, self.train_fn, version, self.model_dir)
        try:
            if self.worker == "process":
                if self._proc is None:
                    self._proc = ProcessPoolExecutor(
                        max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                        initializer=_leave_interrupts_to_the_daemon)
                with _interrupts_held():  # the worker starts with SIGINT held, see below
                    started = loop.run_in_executor(self._proc, job)
                path = await started
            else:
                path = await loop.run_in_executor(self._pool, job)
            fc = await loop.run_in_executor(self._pool, _load, path)
        except asyncio.CancelledError:
            self.training_status = {**self.training_status, "state": "failed",
                                    "error": "stopped with the gateway"}
            raise
        except Exception as exc:  # any failure of the model code must not reach the loop
            self._failed(version, exc)
            return False
        self._use(fc)
        self.last_error = None
        self.training_status = {**self.training_status, "state": "succeeded",
                                "version": fc.version, "finished_at": datetime.now(UTC).isoformat()}
        store = self._store()
        if store is not None:
            store.clear(TRAINING_SOURCE, TRAINING_CONDITION)
        log.info("forecast model v%d trained in %.1f s (window %s .. %s)", fc.version,
                 time.monotonic() - t0, *fc.window)
        return True

    def _use(self, fc: Forecaster | None) -> None:
        """Swap in a model; it takes the weather forecast from the feed while that is fresh
        (the scheduler calls ``predict`` without one)."""
        if fc is not None:
            fc.weather_source = self.weather
        self.forecaster = fc

    def weather(self) -> pd.DataFrame | None:
        """The day-ahead weather forecast if there is a fresh one, else None."""
        return self.feed.current() if self.feed is not None else None

    def weather_status(self) -> dict[str, Any]:
        if self.feed is None:
            return {"state": "off", "status": "no weather forecast configured "
                    "(analytics.weather_feed): the PV forecast uses its model without weather"}
        return self.feed.describe()

    async def _observe_every(self) -> None:
        while True:
            await asyncio.sleep(OBSERVE_S)
            await self.observe_now()

    async def observe_now(self) -> None:
        """Give the forecaster the latest measurements from the historian (worker thread)."""
        fc = self.forecaster
        if fc is None or self.db_path is None or not self.db_path.is_file():
            return
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._pool, _observe, fc, self.db_path, self.info)
        except Exception as exc:  # the historian or pandas must not reach the loop
            log.warning("forecast: cannot read the latest measurements (%s)", exc)

    def _failed(self, version: int, exc: Exception) -> None:
        kept = f"keeping model v{self.forecaster.version}" if self.forecaster else (
            "no forecast until a training succeeds")
        self.last_error = str(exc) or type(exc).__name__
        self.training_status = {**self.training_status, "state": "failed",
                                "error": self.last_error, "kept": kept,
                                "finished_at": datetime.now(UTC).isoformat()}
        log.error("forecast training v%d failed (%s): %s", version, kept, self.last_error)
        store = self._store()
        if store is not None:
            store.raise_(TRAINING_SOURCE, TRAINING_CONDITION, "warning",
                         f"forecast training v{version} failed: {self.last_error}; {kept}")

    def _store(self) -> Any:
        return self.alarms.store if self.alarms is not None else None

    def _on_alarm(self, alarm: Any) -> None:
        """An acknowledged training alarm is done with: the operator has seen the failure."""
        if (alarm.source == TRAINING_SOURCE and alarm.active
                and getattr(alarm, "acked_s", None) is not None):
            self.alarms.store.clear(TRAINING_SOURCE, TRAINING_CONDITION)  # type: ignore[union-attr]

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
        weather = self.weather_status()
        if fc is None:
            return {"available": False, "error": self.last_error,
                    "training": dict(self.training_status), "weather": weather}
        hours = float(req.get("horizon_h", 24))
        step = float(req.get("step_min", 15))
        if not (0 < hours <= 168 and 1 <= step <= 1440):
            raise ValueError("horizon_h must be in (0, 168] and step_min in [1, 1440]")
        await self.observe_now()
        pred, notes = await asyncio.get_running_loop().run_in_executor(
            self._pool, _predict, fc, pd.Timedelta(hours=hours), pd.Timedelta(minutes=step))
        return {"available": True, **fc.meta(), "training": dict(self.training_status),
                "weather": weather, "notes": notes,
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
        from gateway.analytics.battery_health import assess, historian_polls

        assert self.db_path is not None
        span = historian_span(self.db_path)
        since = span[1] - HEALTH_WINDOW_S if span else None
        out: dict[str, Any] = {}
        for dev in self.info.bess_ids:
            df = historian_polls(self.db_path, dev, since_s=since)
            if df.empty or "soc_pct" not in df.columns:
                out[dev] = {"device": dev, "error": "no battery telemetry in the historian yet"}
                continue
            out[dev] = assess(dev, df, self.info.bess_kwh.get(dev, 100.0)).as_dict()
        return out

    def api_train(self, req: dict[str, Any]) -> Any:
        """Start a training (or say one runs); the outcome is in ``analytics_training``."""
        started = self.request_training()
        return {"started": started, "training": dict(self.training_status)}

    def api_training(self, req: dict[str, Any]) -> Any:
        """The latest training run: {run, state, error?, version?, started_at, finished_at}."""
        return dict(self.training_status)

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
                "analytics_training": self.api_training, "analytics_detect": self.api_detect}


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
             "analytics_training": "the latest forecast training: running, succeeded or "
                                   "failed (with the reason)",
             "analytics_detect": "run the anomaly detectors now: {rebaseline?, baseline_s?}"}
    for name, fn in svc.commands().items():
        daemon.api.register(name, _adapt(fn), role="operator" if name in (
            "analytics_train", "analytics_detect") else "viewer", help=help_[name])
    return svc


def _observe(fc: Forecaster, db_path: Path, info: SiteInfo) -> None:
    frame = historian_targets(db_path, info, since_s=time.time() - OBSERVE_SPAN_S)
    cols = [c for c in fc.history.columns if c in frame]
    if len(frame) and len(cols) == len(fc.history.columns):
        fc.observe(frame[cols])


def _predict(fc: Forecaster, horizon: pd.Timedelta, step: pd.Timedelta
             ) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """``predict`` and the notes it left (what fell back and why), taken together."""
    pred = fc.predict(horizon=horizon, step=step)
    return pred, dict(fc.notes)


def _adapt(fn: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any], Any], Any]:
    async def handler(req: dict[str, Any], caller: Any) -> Any:
        try:
            out = fn(req)
            return await out if inspect.isawaitable(out) else out
        except ValueError as exc:
            from gateway.api import ApiError

            raise ApiError(str(exc)) from None
    return handler


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold SIGINT while the worker process is started: it inherits the held signal, so a
    Ctrl-C during its start-up waits until it has chosen to ignore it. Here a Ctrl-C that
    arrives meanwhile is delivered on leaving, not lost."""
    import signal

    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _leave_interrupts_to_the_daemon() -> None:
    """In the training worker: Ctrl-C reaches the whole process group, but stopping is the
    daemon's decision (it shuts the worker down), so the worker ignores SIGINT instead of
    dying with a traceback on the operator's terminal."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
