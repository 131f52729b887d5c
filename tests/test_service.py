"""`autogrid run` under a stand-in service manager: a real NOTIFY_SOCKET (AF_UNIX datagram
socket), a real simulator process and a real daemon process; reload, metrics, stop."""

from __future__ import annotations

import itertools
import json
import os
import re
import select
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.test_cli import AUTOGRID, env_for, free_port
from tests.waiting import until_sync

WATCHDOG_USEC = 400_000  # pings every 0.2 s


def site(tmp: Path, port: int, metrics_port: int, *, with_heater: bool,
         pv_interval: float = 0.3) -> dict[str, Any]:
    cfg = yaml.safe_load((REPO / "site_configs" / "demo.yaml").read_text())
    cfg["connections"][0]["port"] = port
    cfg["gateways"][0]["api_socket"] = str(tmp / "gw1.sock")
    # Flushed only at stop: rows in the file afterwards prove the stop flushed them.
    cfg["historian"].update(path=str(tmp / "history.sqlite"), flush_interval_s=3600,
                            batch_size=100_000)
    keep = {"grid_meter", "pv_roof", "battery"} | ({"water_heater"} if with_heater else set())
    cfg["devices"] = [d for d in cfg["devices"] if d["id"] in keep]
    cfg["control"]["emergency"].pop("pcc_breaker", None)  # not among the devices kept
    for d in cfg["devices"]:
        d["poll_interval_s"] = pv_interval if d["id"] == "pv_roof" else 0.2
        d.pop("safe_setpoints", None)
    by_id = {d["id"]: d for d in cfg["devices"]}
    by_id["battery"]["safe_setpoints"] = {"p_set_kw": -3.5}  # not the simulator's default
    by_id["pv_roof"]["safe_setpoints"] = {"p_limit_pct": 42}
    cfg["metrics"] = {"port": metrics_port}
    sim_devices = cfg["simulation"]["devices"]
    cfg["simulation"]["devices"] = {k: v for k, v in sim_devices.items() if k in keep}
    return cfg


def write(path: Path, cfg: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


@dataclass
class Notify:
    """The service manager's end: receives sd_notify datagrams, with arrival times."""

    sock: socket.socket
    messages: list[tuple[float, dict[str, str]]] = field(default_factory=list)

    def pump(self, timeout: float, other: socket.socket | None = None) -> bool:
        """Receive for up to ``timeout`` s; True when ``other`` became readable first."""
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            socks = [self.sock] + ([other] if other else [])
            ready, _, _ = select.select(socks, [], [], left)
            if other is not None and other in ready:
                return True
            if self.sock in ready:
                raw = self.sock.recv(4096).decode()
                self.messages.append((time.monotonic(), dict(
                    line.split("=", 1) for line in raw.splitlines() if "=" in line)))
        return False

    def wait_for(self, key: str, value: str | None = None, timeout: float = 60) -> dict[str, str]:
        end = time.monotonic() + timeout
        seen = len(self.messages)
        while time.monotonic() < end:
            for _, m in self.messages[seen:]:
                if key in m and (value is None or m[key] == value):
                    return m
            seen = len(self.messages)
            self.pump(0.2)
        raise AssertionError(f"no {key}={value} from the daemon; got {self.messages[-5:]}")

    def pings(self, since: float = 0.0) -> list[float]:
        return [t for t, m in self.messages if m.get("WATCHDOG") == "1" and t >= since]


def api(path: Path, cmd: str, **kw: Any) -> Any:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(path))
        s.sendall(json.dumps({"cmd": cmd, **kw}).encode() + b"\n")
        reply = json.loads(s.makefile().readline())
    assert reply["ok"], reply
    return reply["result"]


def sim_values(path: Path, device: str) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(json.dumps({"cmd": "values", "device": device}).encode() + b"\n")
        reply = json.loads(s.makefile().readline())
    assert reply["ok"], reply
    return dict(reply["result"])


def polls(sock: Path) -> dict[str, int]:
    return {d: v["polls"] for d, v in api(sock, "snapshot")["devices"].items()}


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Notify, Path, Path, Path]]:
    """Simulator (every demo device) + `autogrid run` (a subset) + a NOTIFY_SOCKET."""
    port, mport = free_port(), free_port()
    sim_cfg = tmp_path / "sim.yaml"
    write(sim_cfg, site(tmp_path, port, mport, with_heater=True))
    control = tmp_path / "sim.sock"
    env = env_for(tmp_path)
    sim = subprocess.Popen([*AUTOGRID, "sim", "-c", str(sim_cfg), "--control-socket",
                            str(control)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, text=True)
    nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    nsock.bind(str(tmp_path / "notify.sock"))
    notify = Notify(nsock)
    daemon = None
    log = (tmp_path / "daemon.log").open("w")
    try:
        deadline = time.monotonic() + 30
        while not control.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        cfg = tmp_path / "site.yaml"
        write(cfg, site(tmp_path, port, mport, with_heater=False))
        denv = dict(env, NOTIFY_SOCKET=str(tmp_path / "notify.sock"),
                    WATCHDOG_USEC=str(WATCHDOG_USEC), AUTOGRID_TEST_HOOKS="1")
        daemon = subprocess.Popen([*AUTOGRID, "run", "-c", str(cfg)], cwd=tmp_path, env=denv,
                                  stdout=log, stderr=subprocess.STDOUT, text=True)
        yield daemon, notify, cfg, control, tmp_path / "daemon.log"
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
        sim.send_signal(signal.SIGTERM)
        sim.wait(20)
        nsock.close()
        log.close()


def test_notify_watchdog_reload_and_metrics(running: Any) -> None:
    daemon, notify, cfg, _, logfile = running
    ready = notify.wait_for("READY", "1")
    assert ready["MAINPID"] == str(daemon.pid)
    assert re.match(r"3 devices: \d ok, \d stale, \d offline", ready["STATUS"]), ready
    sock = Path(yaml.safe_load(cfg.read_text())["gateways"][0]["api_socket"])
    # Periodic STATUS: a later one shows every device polled fine.
    notify.wait_for("STATUS", None)
    deadline = time.monotonic() + 30
    while not any(m.get("STATUS", "").startswith("3 devices: 3 ok") for _, m in notify.messages) \
            or len(notify.pings()) < 3:  # (the first pings may trail the first good STATUS)
        assert time.monotonic() < deadline, notify.messages[-3:]
        notify.pump(0.5)
    pings = notify.pings()
    assert len(pings) >= 3

    # A blocked event loop stops the pings (systemd would kill and restart it).
    block_s = 2.0
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        t0 = time.monotonic()
        s.sendall(json.dumps({"cmd": "debug.block_loop", "seconds": block_s}).encode() + b"\n")
        assert notify.pump(30, other=s), "the block command never answered"
        t_reply = time.monotonic()
        reply = json.loads(s.makefile().readline())
    assert reply["ok"] and reply["result"]["blocked_s"] >= block_s
    # The loop was blocked during the blocked_s before it answered (a busy daemon may start
    # on the request well after t0, pinging meanwhile).
    blocked_from = t_reply - reply["result"]["blocked_s"]
    deadline = time.monotonic() + 30
    while not notify.pings(t_reply):  # pings resume
        assert time.monotonic() < deadline, "no ping after the block"
        notify.pump(0.2)
    during = [t for t in notify.pings(blocked_from) if t < t_reply]
    after = notify.pings(t0 - 0.5)  # from just before the block until after it
    gaps = [b - a for a, b in itertools.pairwise(after)]
    assert len(during) <= 1  # at most one sent just before the loop blocked
    assert gaps and max(gaps) >= block_s * 0.9
    assert after[-1] > t0 + block_s  # alive again

    # Metrics over loopback.
    mport = yaml.safe_load(cfg.read_text())["metrics"]["port"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
    m = re.search(r'^autogrid_polls_total\{device="grid_meter"\} (\S+)$', text, re.M)
    assert m and float(m.group(1)) > 0
    assert re.search(r'^autogrid_poll_latency_ms_bucket\{device="battery",le="\+Inf"\} [1-9]',
                     text, re.M)
    assert 'autogrid_device_quality{device="pv_roof",quality="good"} 1.0' in text
    assert 'autogrid_cluster_role{gateway="gw1",role="standalone"} 1.0' in text
    assert "autogrid_historian_rows_total" in text

    # Reload with a good config: water_heater appears, pv_roof is replaced (new interval),
    # grid_meter and battery keep their poll tasks (counters keep rising, never reset).
    before = polls(sock)
    new = yaml.safe_load(cfg.read_text())
    heater = yaml.safe_load((REPO / "site_configs" / "demo.yaml").read_text())["devices"][5]
    heater.update(poll_interval_s=0.2)
    heater.pop("safe_setpoints")
    new["devices"].append(heater)
    next(d for d in new["devices"] if d["id"] == "pv_roof")["poll_interval_s"] = 0.25
    write(cfg, new)
    n_ready = sum(m.get("READY") == "1" for _, m in notify.messages)
    daemon.send_signal(signal.SIGHUP)
    notify.wait_for("RELOADING", "1")
    deadline = time.monotonic() + 30
    while sum(m.get("READY") == "1" for _, m in notify.messages) == n_ready:
        assert time.monotonic() < deadline
        notify.pump(0.2)
    after_reload = polls(sock)
    assert set(after_reload) == {"grid_meter", "pv_roof", "battery", "water_heater"}
    for dev in ("grid_meter", "battery"):
        assert after_reload[dev] > before[dev], (dev, before, after_reload)
    assert after_reload["pv_roof"] < before["pv_roof"]  # a new poll task, counted anew
    until_sync(lambda: all(polls(sock)[d] > after_reload[d]
                           for d in ("grid_meter", "battery", "water_heater")),
               "polls after the reload", interval_s=0.2)
    later = polls(sock)
    assert all(later[d] > after_reload[d] for d in ("grid_meter", "battery", "water_heater"))
    assert "reload: applied: 2 devices unchanged; added water_heater; replaced pv_roof" \
        in logfile.read_text()

    # Reload with a bad config: refused with file:line, the old config keeps running.
    good = cfg.read_text()
    bad = good.replace("template: generic_load", "template: generic_lood")
    cfg.write_text(bad)
    line = next(i for i, t in enumerate(bad.splitlines(), 1) if "generic_lood" in t)
    daemon.send_signal(signal.SIGHUP)
    msg = notify.wait_for("READY", "1")
    while "reload refused" not in msg.get("STATUS", ""):
        msg = notify.wait_for("READY", "1")
    text = logfile.read_text()
    assert re.search(rf"reload: {re.escape(str(cfg))}:{line}:\d+: devices\[3\]\.template", text)
    assert "reload refused" in text and "running config is kept" in text
    still = polls(sock)
    until_sync(lambda: all(polls(sock)[d] > still[d] for d in still),
               "polls after the refused reload", interval_s=0.2)
    assert all(polls(sock)[d] > still[d] for d in still)
    assert set(still) == {"grid_meter", "pv_roof", "battery", "water_heater"}
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0


def test_sigterm_writes_safe_setpoints_flushes_and_exits(running: Any) -> None:
    daemon, notify, cfg, control, logfile = running
    notify.wait_for("READY", "1")
    sock = Path(yaml.safe_load(cfg.read_text())["gateways"][0]["api_socket"])
    deadline = time.monotonic() + 30
    while min(polls(sock).values()) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert sim_values(control, "battery")["p_set_kw"] != -3.5
    db = Path(yaml.safe_load(cfg.read_text())["historian"]["path"])
    daemon.send_signal(signal.SIGTERM)
    code = daemon.wait(30)  # bounded: the runner gives up after 20 s
    notify.pump(0.2)
    assert code == 0, logfile.read_text()
    assert any(m.get("STOPPING") == "1" for _, m in notify.messages)
    # Safe setpoints reached the devices (read back from the simulator itself).
    assert sim_values(control, "battery")["p_set_kw"] == pytest.approx(-3.5)
    assert sim_values(control, "pv_roof")["p_limit_pct"] == pytest.approx(42)
    # The historian flushed at stop (its periodic flush is an hour away).
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM samples").fetchone()[0] > 0
    assert not sock.exists()
    text = logfile.read_text()
    order = [text.index(s) for s in ("stopping:", "safe setpoint p_set_kw=-3.5",
                                     "safe setpoints written: 2 of 2", "stopped cleanly")]
    assert order == sorted(order), text
    assert "Traceback" not in text
    os.stat(logfile)
