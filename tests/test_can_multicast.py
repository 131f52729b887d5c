"""CAN over udp_multicast between two processes (`autogrid sim` and `autogrid run`), in a
network namespace this test makes, where loopback carries the group and nothing else
exists: the working path of the loopback guard, and its refusal when the route is missing.

Needs root and iproute2 (network namespaces); skipped otherwise, with the reason."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import AUTOGRID, env_for, run, stop, stop_sim_after

GROUP = "239.74.163.2"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 to make a network namespace")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns() -> Iterator[str]:
    """A namespace with only ``lo``: up, multicast on, no route for the group yet."""
    name = f"agcan-{uuid.uuid4().hex[:8]}"
    try:
        ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot make a network namespace here: {exc.stderr.decode().strip()}")
    try:
        try:  # a container may allow making a namespace but not entering one
            ip("netns", "exec", name, "true")
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot enter a network namespace here: "
                        f"{exc.stderr.decode().strip()}")
        ip("-n", name, "link", "set", "lo", "up")
        ip("-n", name, "link", "set", "lo", "multicast", "on")
        yield name
    finally:
        ip("netns", "del", name)


def site(tmp: Path) -> Path:
    path = tmp / "site.yaml"
    path.write_text(
        "site: {name: can multicast}\n"
        f"gateways: [{{id: gw, api_socket: '{tmp / 'gw.sock'}'}}]\n"
        "connections:\n"
        f"  - {{id: bus, type: can, interface: udp_multicast, channel: '{GROUP}',\n"
        "     frame_timeout_s: 3.0, reconnect_delay_s: 0.2, reconnect_delay_max_s: 1.0}\n"
        "devices:\n"
        "  - {id: bms1, nature: bms, template: pylontech_bms_can, connection: bus,\n"
        "     ratings: {capacity_kwh: 10}}\n"
        "  - {id: ev1, nature: evse, template: dc_charger_can, connection: bus,\n"
        "     ratings: {p_max_kw: 50}}\n"
        "historian: {enabled: false}\n")
    return path


def in_ns(ns: str, args: list[str], tmp: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", ns, *AUTOGRID, *args], cwd=tmp,
                            env=env_for(tmp), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_frames(ns: str, seconds: float = 60) -> None:
    """Block until a frame of the simulator arrives on the group inside the namespace: a
    simulator that starts slowly (a loaded machine) is not a device going offline."""
    listen = ("import can, sys\n"
              f"bus = can.Bus(interface='udp_multicast', channel='{GROUP}')\n"
              f"msg = bus.recv({seconds})\n"
              "bus.shutdown()\n"
              "sys.exit(0 if msg is not None else 1)\n")
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", listen],
                       capture_output=True, text=True, timeout=seconds + 30)
    assert r.returncode == 0, f"no frame from the simulator within {seconds} s: {r.stderr}"


def wait_status(cfg: Path, tmp: Path, done: Any, seconds: float = 60) -> dict[str, Any]:
    """The daemon's snapshot once ``done(snapshot)`` holds (or the last one seen)."""
    deadline = time.monotonic() + seconds
    snap: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = run(["status", "-c", str(cfg), "--json"], tmp)
        if r.returncode == 0:
            snap = json.loads(r.stdout)
            if done(snap):
                break
        time.sleep(0.3)
    return snap


def test_sim_and_daemon_talk_can_over_loopback_multicast(netns: str, tmp_path: Path
                                                         ) -> None:
    ip("-n", netns, "route", "add", f"{GROUP}/32", "dev", "lo")
    cfg = site(tmp_path)
    sim = in_ns(netns, ["sim", "-c", str(cfg)], tmp_path)
    daemon = None
    try:
        wait_for_frames(netns)
        daemon = in_ns(netns, ["run", "-c", str(cfg)], tmp_path)
        snap = wait_status(cfg, tmp_path,
                           lambda s: s["summary"]["devices"]["good"] == 2)
        assert snap and snap["summary"]["devices"]["good"] == 2, snap
        bms = snap["devices"]["bms1"]["points"]
        assert bms["soc_pct"]["quality"] == "good"
        assert 0 < bms["soc_pct"]["value"] <= 100
        assert bms["cell_temp_max_c"]["quality"] == "good"
        assert snap["devices"]["ev1"]["points"]
        code, _, err = stop(daemon, signal.SIGTERM)
        daemon = None
        assert code == 0, err
        assert "Traceback" not in err
        assert "offline" not in err  # both devices waited for the bus to open
    finally:
        stop_sim_after(daemon, sim)


def test_daemon_refuses_multicast_that_loopback_does_not_carry(netns: str, tmp_path: Path
                                                                ) -> None:
    cfg = site(tmp_path)  # no route for the group in the namespace
    daemon = in_ns(netns, ["run", "-c", str(cfg)], tmp_path)
    try:
        snap = wait_status(cfg, tmp_path,
                           lambda s: bool(s["devices"]["bms1"]["last_error"]))
        assert snap, "the daemon never answered"
        bms = snap["devices"]["bms1"]
        assert bms["quality"] == "offline"
        assert f"sudo ip route add {GROUP}/32 dev lo" in bms["last_error"]
    finally:
        code, _, err = stop(daemon, signal.SIGTERM)
    assert code == 0, err  # refused, marked offline, still running: not a crash
    assert "Traceback" not in err
