"""Anomaly detection against injected faults (ground truth), the service, the API, the CLI."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from gateway.analytics.forecast import Forecaster, train
from gateway.analytics.inject import KINDS, evaluate, scenarios
from gateway.analytics.service import AnalyticsService
from gateway.analytics.site import site_info
from gateway.config.loader import load_config
from tests.conftest import REPO

DEMO = REPO / "site_configs" / "demo.yaml"


def test_detectors_precision_recall_on_injected_faults() -> None:
    cfg = load_config(DEMO).config
    scs = scenarios(7, datetime(2025, 4, 1, tzinfo=UTC))  # one of each kind + a clean one
    assert {f.kind for sc in scs for f in sc.faults} == set(KINDS)
    ev = evaluate(cfg, scs, forest_trees=20)
    print("\n" + ev.table().to_string())
    p_evt, r_evt = ev.event_scores()
    print(f"device-days: precision {ev.precision:.2f} recall {ev.recall:.2f}; "
          f"injected faults: precision {p_evt:.2f} recall {r_evt:.2f}")
    assert ev.precision >= 0.9
    assert ev.recall >= 0.8
    assert r_evt >= 0.8
    for _, a in ev.anomalies:  # every alarm says what, where, how bad and why
        assert a.device and a.signal and a.score >= 1.0 and len(a.explanation) > 20
        assert pd.Timestamp(a.ts).tzinfo is not None


def _small_forecaster(version: int) -> Forecaster:
    cfg = load_config(DEMO).config
    info = site_info(cfg)
    from gateway.analytics.data import reference_year

    fr = reference_year(info)
    fr = fr[fr.index < pd.Timestamp("2025-02-05", tz="UTC")]
    return train(fr, info, version=version, n_trees=5, backtest_days=7, retrain_days=7)


async def test_service_failed_training_keeps_last_good_model(tmp_path: Path) -> None:
    info = site_info(load_config(DEMO).config)
    fail = {"now": False}

    def train_fn(version: int) -> Forecaster:
        if fail["now"]:
            raise ValueError("historian unreadable")
        return _small_forecaster(version)

    svc = AnalyticsService(info, tmp_path / "models", None, retrain_interval_s=3600,
                           train_fn=train_fn, worker="thread")
    await svc.start()
    try:
        assert svc.forecaster is None
        assert (await svc.api_forecast({}))["available"] is False
        assert await svc.train_now()
        assert svc.forecaster is not None and svc.forecaster.version == 1
        assert (tmp_path / "models" / "forecast-v1.pkl").is_file()
        fail["now"] = True
        assert svc.request_training()
        assert svc.training is not None
        assert await svc.training is False
        assert svc.forecaster.version == 1  # the last good model stays
        alarms = svc.api_anomalies({})
        assert alarms[-1]["device"] == "analytics" and "keeping model v1" in alarms[-1][
            "explanation"]
        got = await svc.api_forecast({"horizon_h": 6, "step_min": 60})
        assert got["available"] and got["version"] == 1
        assert len(got["forecast"]["load"]["p50"]) == 6
    finally:
        await svc.stop()
    svc2 = AnalyticsService(info, tmp_path / "models", None)
    await svc2.start()  # a restart picks the saved model up
    try:
        assert svc2.forecaster is not None and svc2.forecaster.version == 1
    finally:
        await svc2.stop()


async def test_api_commands_through_the_daemon(tmp_path: Path) -> None:
    from gateway.apiclient import ApiClient
    from gateway.daemon import Daemon

    cfg = load_config(DEMO).config
    cfg = cfg.model_copy(update={
        "devices": [], "control": None,  # no devices: nothing for control to steer or name
        "historian": cfg.historian.model_copy(update={"path": tmp_path / "h.sqlite"})})
    daemon = Daemon(cfg, socket_path=tmp_path / "api.sock")
    await daemon.start()
    try:
        async with ApiClient(tmp_path / "api.sock") as client:
            assert await client.request("anomalies") == []
            fc = await client.request("forecast")
            assert fc["available"] is False
            health = await client.request("battery_health")
            assert health["batteries"] == []
    finally:
        await daemon.shutdown()


def test_cli_forecast_prints_metrics_and_writes_plot(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.cli import main

    monkeypatch.chdir(tmp_path)  # the demo's relative historian path: none here

    png = tmp_path / "fc.png"
    rc = main(["forecast", "-c", str(DEMO), "--source", "reference", "--days", "7",
               "--retrain-days", "7", "--trees", "5", "--plot", str(png), "--model-dir",
               str(tmp_path / "m"), "--no-progress"])
    out = capsys.readouterr().out
    print(out)
    assert rc == 0
    assert "== load" in out and "== pv" in out and "skill vs seasonal_naive_7d" in out
    assert "vs clear-sky persistence" in out and "mae_kw" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "m" / "forecast-v1.pkl").is_file()
    assert main(["forecast", "-c", str(DEMO), "--source", "historian"]) == 1  # no historian
    assert "no historian database" in capsys.readouterr().err


async def test_training_in_a_worker_process_reports_its_failure(tmp_path: Path) -> None:
    info = site_info(load_config(DEMO).config)
    svc = AnalyticsService(info, tmp_path / "models", tmp_path / "missing.sqlite")
    assert svc.worker == "process"
    await svc.start()
    try:
        assert await svc.train_now() is False  # ran in the spawned worker, failed there
        assert svc.last_error is not None and "no historian database" in svc.last_error
        assert svc.anomalies[-1].signal == "forecast_training"
    finally:
        await svc.stop()
