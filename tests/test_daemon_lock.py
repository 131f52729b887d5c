"""One controller per gateway: `autogrid run` takes an exclusive lock in the state directory
before it touches anything, and never removes a socket it does not own."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from gateway.api import ApiServer
from gateway.config.models import SiteConfig
from gateway.daemon import Daemon
from gateway.runlock import AlreadyRunning, LockError
from gateway.state import SiteState
from tests.test_cli import AUTOGRID, env_for, stop
from tests.waiting import until_sync


def ping(sock: Path) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(sock))
        s.sendall(b'{"cmd": "ping"}\n')
        reply = json.loads(s.makefile().readline())
    assert reply["ok"], reply
    return dict(reply["result"])


def answers(sock: Path) -> bool:
    try:
        ping(sock)
    except OSError:
        return False
    return True


def test_second_and_third_run_are_refused_and_the_first_keeps_serving(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    sock = tmp_path / "gw1.sock"
    cfg = tmp_path / "site.yaml"
    cfg.write_text("site: {name: lock test}\n"
                   f"gateways: [{{id: gw1, api_socket: '{sock}'}}]\n"
                   f"historian: {{path: '{state / 'history.sqlite'}'}}\n")
    first = subprocess.Popen([*AUTOGRID, "run", "-c", str(cfg)], cwd=tmp_path,
                             env=env_for(tmp_path), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        until_sync(lambda: answers(sock) or first.poll() is not None, "the first daemon")
        assert first.poll() is None, first.communicate()
        inode = sock.stat().st_ino
        for attempt in ("second", "third"):
            r = subprocess.run([*AUTOGRID, "run", "-c", str(cfg)], cwd=tmp_path,
                               env=env_for(tmp_path), capture_output=True, text=True,
                               timeout=60)
            assert r.returncode != 0, (attempt, r.stderr)
            # the running daemon's socket is untouched and it still answers
            assert sock.exists() and sock.stat().st_ino == inode, (attempt, r.stderr)
            assert ping(sock)["gateway"] == "gw1"
            lines = r.stderr.strip().splitlines()
            assert lines == [f"autogrid run: gateway gw1 is already running (pid {first.pid}, "
                             f"lock {state / 'gw1.lock'})"], (attempt, r.stderr)
        assert first.poll() is None
    finally:
        code, _, err = stop(first, signal.SIGTERM)
    assert code == 0, err
    assert not sock.exists()  # the owner removes its own socket on the way out


async def test_a_daemon_that_cannot_lock_touches_nothing(tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    cfg = SiteConfig.model_validate({
        "site": {"name": "x"}, "gateways": [{"id": "gw1", "api_socket": str(sock)}],
        "historian": {"enabled": False}})
    first = Daemon(cfg)
    await first.start()
    try:
        assert first.lock.path == tmp_path / "gw1.lock"  # no historian: next to the socket
        second = Daemon(cfg)
        with pytest.raises(AlreadyRunning, match=rf"gateway gw1 is already running "
                                                 rf"\(pid {os.getpid()}, lock "):
            await second.start()
        assert second.api is None and not second.ios
        assert sock.exists()
    finally:
        await first.shutdown()
    assert not first.lock.held
    again = Daemon(cfg)  # the lock is free once the first has stopped
    await again.start()
    await again.shutdown()


def test_a_lock_path_under_a_regular_file_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    cfg = SiteConfig.model_validate({
        "site": {"name": "x"},
        "gateways": [{"id": "gw1", "api_socket": str(blocker / "gw1.sock")}],
        "historian": {"enabled": False}})
    with pytest.raises(LockError, match=rf"cannot create the lock file {blocker}/gw1.lock: "):
        Daemon(cfg).lock.acquire()


async def test_stopping_leaves_a_socket_it_does_not_own(tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    api = ApiServer(SiteState(), sock, "gw1")
    await api.start()
    sock.unlink()  # someone else now serves this path
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(sock))
    try:
        await api.stop()
        assert sock.exists()
    finally:
        other.close()
    refused = ApiServer(SiteState(), sock, "gw1")
    await refused.stop()  # never started: removes nothing
    assert sock.exists()
