"""The real `autogrid console` in tmux against `autogrid demo` with site control: navigate
every screen, acknowledge an alarm, change an EV priority, trigger and confirm an emergency
stop and see the simulated devices go to zero, and see a viewer refused.

Captured screens are saved under ``$AUTOGRID_TEST_ARTIFACTS/console`` (or the test's tmp
directory) so a failure can be read as the operator would have seen it.
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.apiclient import ApiClient
from tests.conftest import REPO
from tests.test_cli import AUTOGRID, env_for

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

TOKEN = "e2e-operator-token"


def site_config(tmp: Path, pcc: bool = True) -> Path:
    """The demo site with site control on, a protection threshold that raises an alarm at
    once (cell temperature above 10 °C), a car already at ev_bay2, and a role policy that
    makes this user a viewer unless it presents the operator token."""
    cfg = yaml.safe_load((REPO / "site_configs" / "demo.yaml").read_text())
    cfg["control"]["protection"] = {"cell_temp_max_c": 10}
    cfg["simulation"]["clock"]["start"] = "2025-06-21T08:01:00+02:00"
    cfg["historian"]["path"] = str(tmp / "history.sqlite")
    cfg["console"] = {"roles": {"viewer": [getpass.getuser()]},
                      "tokens": [{"name": "op-anna", "role": "operator",
                                  "sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}]}
    if not pcc:  # a site that cannot island: no breaker at all, none named as the PCC
        cfg["devices"] = [d for d in cfg["devices"] if d["nature"] != "breaker"]
        kept = {d["id"] for d in cfg["devices"]}
        cfg["simulation"]["devices"] = {k: v for k, v in cfg["simulation"]["devices"].items()
                                        if k in kept}
        cfg["control"].pop("emergency", None)
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class Tmux:
    """One tmux server of our own (-L), one session running the console."""

    def __init__(self, tmp: Path, artifacts: Path) -> None:
        self.sock = f"autogrid-test-{uuid.uuid4().hex[:8]}"
        self.tmp = tmp
        self.artifacts = artifacts
        self.n = 0
        self.session = ""

    def tmux(self, *args: str) -> str:
        r = subprocess.run(["tmux", "-L", self.sock, *args], capture_output=True, text=True,
                           timeout=10)
        return r.stdout

    def start(self, name: str, extra_env: dict[str, str]) -> None:
        env = {**env_for(self.tmp), "LANG": "C.UTF-8", "TERM": "screen", **extra_env}
        env_args = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()
                            if k in ("PYTHONPATH", "RUNTIME_DIRECTORY", "LANG", "TERM",
                                     "AUTOGRID_TOKEN", "PATH", "HOME", "NO_COLOR"))
        cmd = (f"cd {shlex.quote(str(self.tmp))} && env -i {env_args} "
               f"{' '.join(shlex.quote(a) for a in AUTOGRID)} console "
               f"-c {shlex.quote(str(self.tmp / 'site.yaml'))} "
               f"2> {shlex.quote(str(self.tmp / (name + '.err')))}; "
               f"echo CONSOLE-EXIT=$?; sleep 60")
        subprocess.run(["tmux", "-L", self.sock, "new-session", "-d", "-s", name, "-x", "100",
                        "-y", "30", cmd], check=True, timeout=10)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.session)

    def keys(self, *keys: str) -> None:
        for k in keys:
            self.tmux("send-keys", "-t", self.session, k)
            time.sleep(0.15)

    def wait_for(self, *texts: str, timeout: float = 60.0, save: str | None = None) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if all(t in screen for t in texts):
                if save:
                    self.save(save, screen)
                return screen
            time.sleep(0.2)
        self.save(f"FAILED-{save or 'wait'}", screen)
        raise AssertionError(f"never saw {texts!r} on the screen:\n{screen}")

    def wait_until(self, ok: Callable[[str], bool], save: str, timeout: float = 60.0
                   ) -> str:
        """Wait until ``ok(screen)`` holds (a condition, not a sleep)."""
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            try:
                if ok(screen):
                    self.save(save, screen)
                    return screen
            except (StopIteration, ValueError, IndexError):
                pass
            time.sleep(0.2)
        self.save(f"FAILED-{save}", screen)
        raise AssertionError(f"the screen never met the condition ({save}):\n{screen}")

    def save(self, name: str, screen: str) -> None:
        self.n += 1
        (self.artifacts / f"{self.n:02d}-{name}.txt").write_text(screen)

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True,
                       timeout=10)


def snapshot(sock: Path) -> dict[str, Any]:
    async def get() -> Any:
        async with ApiClient(sock) as c:
            return await c.request("snapshot")
    result: dict[str, Any] = asyncio.run(get())
    return result


def value(snap: dict[str, Any], dev: str, point: str) -> Any:
    return snap["devices"][dev]["points"].get(point, {}).get("value")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Path]:
    yield from run_demo(tmp_path, pcc=True)


@pytest.fixture
def demo_without_pcc(tmp_path: Path) -> Iterator[Path]:
    yield from run_demo(tmp_path, pcc=False)


def run_demo(tmp_path: Path, pcc: bool) -> Iterator[Path]:
    """`autogrid demo` on the site of ``site_config``, until the test is done."""
    devices = len(yaml.safe_load(site_config(tmp_path, pcc).read_text())["devices"])
    out = (tmp_path / "demo.out").open("w")
    proc = subprocess.Popen([*AUTOGRID, "demo", "-c", str(tmp_path / "site.yaml"),
                             "--interval", "5"], cwd=tmp_path, env=env_for(tmp_path),
                            stdout=out, stderr=subprocess.STDOUT, text=True)
    sock = tmp_path / "autogrid-gw1.sock"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sock.exists():
                try:
                    if snapshot(sock)["summary"]["devices"]["good"] == devices:
                        break
                except Exception:
                    pass
            assert proc.poll() is None, (tmp_path / "demo.out").read_text()
            time.sleep(0.3)
        else:
            raise AssertionError("the demo did not come up")
        yield sock
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()
    assert proc.returncode == 0, (tmp_path / "demo.out").read_text()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    base = os.environ.get("AUTOGRID_TEST_ARTIFACTS")
    path = Path(base) / "console" if base else tmp_path / "screens"
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_console_end_to_end_in_tmux(demo: Path, tmp_path: Path, artifacts: Path) -> None:
    tm = Tmux(tmp_path, artifacts)
    try:
        # -- a viewer (this user, by the policy) sees everything and may change nothing --
        tm.session = "viewer"
        tm.start("viewer", {"NO_COLOR": "1"})  # and the monochrome theme
        tm.wait_for("AutoGrid ▸ Overview", "(viewer)", "Power flow", "Grid ", " kW",
                    save="viewer-overview")
        tm.keys("9")
        tm.wait_for("EMERGENCY CONTROLS", "is viewer; this needs the operator role",
                    save="viewer-emergency")
        tm.keys("s")
        s = tm.wait_for("Refused:", save="viewer-refused")
        assert "step 1 of 2" not in s
        tm.keys("q")
        tm.wait_for("CONSOLE-EXIT=0")

        # -- an operator (by token) goes through every screen and acts ----------------------
        tm.session = "operator"
        tm.start("operator", {"AUTOGRID_TOKEN": TOKEN})
        tm.wait_for("AutoGrid ▸ Overview", "op-anna (token", "(operator)", "Site mode normal",
                    "Active alarms 1", save="overview")
        tm.tmux("resize-window", "-t", "operator", "-x", "80", "-y", "24")
        s = tm.wait_for("Power flow", "Site load", "1 Overview", save="overview-80x24")
        lines = s.rstrip("\n").split("\n")
        assert len(lines) <= 24 and max(len(ln) for ln in lines) <= 80
        tm.tmux("resize-window", "-t", "operator", "-x", "100", "-y", "30")
        tm.keys("2")
        tm.wait_for("Nature", "grid_meter", "pv_inverter", "modbus_tcp", "good",
                    save="devices")
        tm.keys("Down", "Down", "Down", "Down", "Enter")  # battery, ev_bay1, ev_bay2, feeder, grid
        tm.wait_for("grid_meter  meter via modbus_tcp", "p_kw", " kW ", "Comm  requests",
                    save="device-detail")
        tm.keys("Escape", "3")
        tm.wait_for("Grid limits", "import limit 43.0 kW", "grid_limits", "ON",
                    "peak threshold 38.7 kW", "self_consumption", save="grid-operations")
        tm.keys("5")
        tm.wait_for("Energy trading is not part of this gateway yet", save="trading")
        tm.keys("6")
        tm.wait_for("Forecast vs actual", "Anomalies", "Battery health", save="analytics")
        tm.keys("8")
        tm.wait_for("Latency", "grid_meter", "historian", "rows", "Cluster", save="diagnostics")

        # acknowledge the over-temperature alarm
        tm.keys("7")
        tm.wait_for("critical", "battery", "active", "cell over temperature", save="alarms")
        tm.keys("a")
        s = tm.wait_for("Done: acknowledge alarm", "alarm_ack", save="alarm-acknowledged")
        assert "op-anna" in s  # acked by / audit user

        # change the EV priority of the car at ev_bay2
        tm.keys("4")
        tm.wait_for("ev_bay2", "public", save="ev")
        tm.keys("p")
        tm.wait_for("Priority at ev_bay2", "emergency vehicle", save="ev-priority-dialog")
        tm.keys("1")
        s = tm.wait_for("Done: priority at ev_bay2", "emergency  1 car", save="ev-priority")

        # emergency stop: two steps, then the devices go to zero
        before = snapshot(demo)
        assert (value(before, "pv_roof", "p_kw") or 0) > 0.1
        tm.keys("9")
        tm.wait_for("EMERGENCY CONTROLS", "EMERGENCY STOP", "Site mode normal",
                    save="emergency")
        tm.keys("i")  # this site has a PCC breaker: islanding is asked for confirmation
        tm.wait_for("ISLAND — step 1 of 2", save="island-step1")
        tm.keys("Escape")
        tm.wait_for("Island cancelled; nothing was sent", save="island-cancelled")
        tm.keys("s")
        tm.wait_for("step 1 of 2", save="estop-step1")
        tm.keys("y")
        tm.wait_for("step 2 of 2: ARMED", "Type STOP", save="estop-step2")
        tm.keys("S", "T", "O", "P", "Enter")
        tm.wait_for("Done: Emergency stop", "Site mode estop", save="estop-done")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            snap = snapshot(demo)
            zero = [value(snap, d, "p_kw") for d in ("pv_roof", "ev_bay1", "ev_bay2")]
            if all(isinstance(v, int | float) and abs(v) < 0.05 for v in zero):
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"devices did not go to zero: {zero}")
        tm.keys("1")
        tm.wait_for("PV               0.0 kW idle", "EV chargers      0.0 kW idle",
                    "Site mode estop", save="overview-after-estop")
        tm.keys("7")
        s = tm.wait_for("emergency_stop", save="audit-after-estop")
        assert "op-anna" in s
        tm.keys("q")
        tm.wait_for("CONSOLE-EXIT=0")
        for name in ("viewer", "operator"):
            err = (tmp_path / f"{name}.err").read_text()
            assert "Traceback" not in err, err
    finally:
        tm.kill()


def test_island_refused_at_once_on_a_site_without_pcc_breaker(
        demo_without_pcc: Path, tmp_path: Path, artifacts: Path) -> None:
    tm = Tmux(tmp_path, artifacts)
    try:
        tm.session = "operator"
        tm.start("operator", {"AUTOGRID_TOKEN": TOKEN})
        tm.wait_for("AutoGrid ▸ Overview", "(operator)", save="nopcc-overview")
        tm.keys("9")
        tm.wait_for("EMERGENCY CONTROLS", "Site mode normal", save="nopcc-emergency")
        tm.keys("i")  # one key press: the reason, and no confirmation to go through
        s = tm.wait_for("Island: refused: no PCC breaker configured", save="nopcc-island")
        assert "step 1 of 2" not in s
        tm.keys("q")
        tm.wait_for("CONSOLE-EXIT=0")
        snap = snapshot(demo_without_pcc)
        assert "Traceback" not in (tmp_path / "operator.err").read_text()
        assert snap["summary"]["devices"]["good"] > 0
    finally:
        tm.kill()


def test_console_without_daemon_or_terminal_says_why(tmp_path: Path) -> None:
    r = subprocess.run([*AUTOGRID, "console", "--socket", str(tmp_path / "none.sock")],
                       cwd=tmp_path, env=env_for(tmp_path), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1
    assert "autogrid console: the daemon is not running (no socket at" in r.stderr
    assert "Traceback" not in r.stderr
    assert sys.executable  # the same interpreter runs the console in tmux


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to shed the right to open any file")
def test_console_denied_access_to_the_socket_says_why(tmp_path: Path) -> None:
    """A user the socket does not admit: a one-line reason and exit 1, no traceback. The
    socket belongs to another user (mode 0600); the console runs without the capability
    that lets root open any file, so the kernel refuses it like any other user."""
    shed = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    if subprocess.run([*shed, "true"], capture_output=True, timeout=10).returncode != 0:
        pytest.skip("setpriv cannot shed capabilities here (an unprivileged container?)")
    sock_path = tmp_path / "gw.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen()
    os.chown(sock_path, 65534, 65534)
    sock_path.chmod(0o600)
    try:
        r = subprocess.run([*shed, *AUTOGRID, "console", "--socket", str(sock_path)],
                           cwd=tmp_path, env=env_for(tmp_path), capture_output=True,
                           text=True, timeout=60)
    finally:
        listener.close()
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"access to {sock_path} denied" in r.stderr
    assert "Traceback" not in r.stderr
