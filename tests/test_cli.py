"""The `autogrid` command as a user runs it: real processes, real sockets, real signals."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

AUTOGRID = [sys.executable, "-m", "gateway.cli"]


def env_for(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["RUNTIME_DIRECTORY"] = str(tmp)  # default API socket goes here, not /run or /tmp
    env.pop("JOURNAL_STREAM", None)
    env["PYTHONPATH"] = str(REPO)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(args: list[str], tmp: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(AUTOGRID + args, cwd=tmp, env=env_for(tmp), capture_output=True,
                          text=True, timeout=timeout)


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT, timeout: float = 20
         ) -> tuple[int, str, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def stop_sim_after(daemon: subprocess.Popen[str] | None, sim: subprocess.Popen[str]) -> None:
    """Clean up after a test of `run` against `sim`: a daemon still running (the test
    failed before stopping it) is killed; the simulator must stop cleanly on SIGTERM."""
    if daemon is not None:
        daemon.kill()
        daemon.communicate()
    sim_code, _, sim_err = stop(sim, signal.SIGTERM)
    assert sim_code == 0, sim_err


def test_help_lists_every_command(tmp_path: Path) -> None:
    r = run(["--help"], tmp_path)
    assert r.returncode == 0
    for cmd in ("run", "sim", "demo", "check", "status", "export"):
        assert cmd in r.stdout


def test_demo_runs_and_stops_by_itself(tmp_path: Path) -> None:
    r = run(["demo", "--duration", "3"], tmp_path, timeout=90)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    # not a terminal: one line at start and one per change of health, mode or alarms
    # (the whole page every second made 1,300 lines a minute of a log)
    assert "Power flow" not in r.stdout
    lines = [ln for ln in r.stdout.splitlines() if "; devices " in ln]
    demo = yaml.safe_load((REPO / "site_configs" / "demo.yaml").read_text())
    n = len(demo["devices"])
    assert lines and f"devices {n} ok 0 stale 0 offline; mode normal" in r.stdout
    tails = [ln.split("; devices ", 1)[1] for ln in lines]
    assert all(a != b for a, b in pairwise(tails)), lines
    # demo.yaml's simulated day starts 2025-06-21 07:30 in Europe/Berlin, at 60x
    assert lines[0].startswith("2025-06-21 07:3") and " CEST " in lines[0]
    assert "stopped" in r.stdout
    assert not list(tmp_path.glob("*.sock")), "API socket left behind"
    assert (tmp_path / "autogrid-demo.sqlite").is_file()


def test_demo_stops_cleanly_on_ctrl_c_and_status_works_meanwhile(tmp_path: Path) -> None:
    proc = subprocess.Popen([*AUTOGRID, "demo", "--interval", "0.5"], cwd=tmp_path,
                            env=env_for(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    devices = len(yaml.safe_load((REPO / "site_configs" / "demo.yaml").read_text())["devices"])
    try:
        sock = tmp_path / "autogrid-gw1.sock"
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline:
            if sock.exists():
                status = run(["status", "--socket", str(sock), "--json"], tmp_path)
                if status.returncode == 0 and \
                        json.loads(status.stdout)["summary"]["devices"]["good"] == devices:
                    break
            time.sleep(0.3)
        assert status is not None and status.returncode == 0, status and status.stderr
        snap = json.loads(status.stdout)
        assert snap["gateway"] == "gw1"
        assert snap["summary"]["grid_kw"] is not None
        assert snap["mode"] == "normal" and isinstance(snap["alarms"], list)
        assert snap["site_time"]["simulated"] is True
        assert snap["site_time"]["timezone"] == "Europe/Berlin"
        text = run(["status", "--socket", str(sock)], tmp_path)
        assert "Power flow" in text.stdout and "grid_meter" in text.stdout
        assert "Site mode normal   Active alarms " in text.stdout
        assert "site time 2025-06-21 " in text.stdout
        assert "(Europe/Berlin), simulated at 60x real time" in text.stdout
    finally:
        code, out, err = stop(proc)
    assert code == 0, err
    assert "Traceback" not in out + err
    assert "stopped" in out
    assert not (tmp_path / "autogrid-gw1.sock").exists()


def test_status_without_daemon_is_a_clear_message(tmp_path: Path) -> None:
    r = run(["status", "--socket", str(tmp_path / "none.sock")], tmp_path)
    assert r.returncode == 1
    assert "not running" in r.stderr and "Traceback" not in r.stderr


def test_check_reports_errors_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("site:\n  name: x\ngateways:\n  - id: gw1\ndevices:\n  - id: d1\n"
                   "    nature: meter\n    template: meter_3phh\n    connection: nowhere\n")
    r = run(["check", str(bad)], tmp_path)
    assert r.returncode == 1
    assert "bad.yaml:8:15: devices[0].template" in r.stdout
    assert "meter_3ph" in r.stdout  # the close match is suggested
    assert "bad.yaml:9:17: devices[0].connection" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    ok = run(["check", str(REPO / "site_configs" / "demo.yaml")], tmp_path)
    assert ok.returncode == 0 and "OK" in ok.stdout


def test_run_with_a_bad_config_starts_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("site: {name: x}\ngateways: [{id: gw1}]\nhistorian: {batch_size: -1}\n")
    r = run(["run", "-c", str(bad)], tmp_path)
    assert r.returncode == 1
    assert "bad.yaml:3:" in r.stderr and "historian.batch_size" in r.stderr
    assert "nothing was started" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture
def split_site(tmp_path: Path) -> Path:
    """The demo site with fixed free ports, so `sim` and `run` can be separate processes."""
    cfg = yaml.safe_load((REPO / "site_configs" / "demo.yaml").read_text())
    cfg["connections"][0]["port"] = free_port()
    cfg["gateways"][0]["api_socket"] = str(tmp_path / "gw1.sock")
    cfg["historian"]["path"] = str(tmp_path / "history.sqlite")
    cfg["historian"]["flush_interval_s"] = 0.2
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_sim_and_run_as_separate_processes_then_export(split_site: Path, tmp_path: Path
                                                       ) -> None:
    sim = subprocess.Popen([*AUTOGRID, "sim", "-c", str(split_site)], cwd=tmp_path,
                           env=env_for(tmp_path), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    devices = len(yaml.safe_load(split_site.read_text())["devices"])
    daemon = None
    try:
        time.sleep(1.0)
        daemon = subprocess.Popen([*AUTOGRID, "run", "-c", str(split_site)], cwd=tmp_path,
                                  env=env_for(tmp_path), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        good = 0
        while time.monotonic() < deadline and good < devices:
            r = run(["status", "-c", str(split_site), "--json"], tmp_path)
            if r.returncode == 0:
                good = json.loads(r.stdout)["summary"]["devices"]["good"]
            time.sleep(0.3)
        assert good == devices
        time.sleep(1.0)
        code, _, err = stop(daemon, signal.SIGTERM)
        daemon = None
        assert code == 0, err
        assert "Traceback" not in err
    finally:
        stop_sim_after(daemon, sim)

    out = tmp_path / "history.csv"
    r = run(["export", "-c", str(split_site), "--device", "grid_meter", "-o", str(out)],
            tmp_path)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    assert rows and {row["device"] for row in rows} == {"grid_meter"}
    assert {"time", "device", "point", "value", "unit", "quality"} <= set(rows[0])
    assert any(row["point"] == "p_kw" and row["unit"] == "kW" for row in rows)
