"""sd_notify client against a real datagram socket; journald log lines; per-module levels."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest

from gateway.config.models import Logging as LoggingConfig
from gateway.logsetup import setup_logging
from gateway.service.notify import Notifier, watchdog_interval_s


def test_notifier_sends_key_value_datagrams(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as rx:
        rx.bind(str(path))
        n = Notifier.from_env({"NOTIFY_SOCKET": str(path)})
        assert n.ready("3 devices:\n all ok")
        assert n.watchdog()
        n.close()
        first = rx.recv(4096).decode().splitlines()
        assert "READY=1" in first and "STATUS=3 devices: all ok" in first
        assert f"MAINPID={os.getpid()}" in first
        assert rx.recv(4096) == b"WATCHDOG=1"
    assert not Notifier.from_env({}).ready("x")  # outside systemd: a no-op


def test_watchdog_interval_is_half_of_watchdogsec() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000",
                                "WATCHDOG_PID": str(os.getpid())}) == 15.0


def test_journald_prefixes_and_module_levels(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    try:
        setup_logging(LoggingConfig(level="info", modules={"autogrid.poller": "error"}))
        logging.getLogger("autogrid.api").warning("careful")
        logging.getLogger("autogrid.poller").warning("hidden")
        logging.getLogger("autogrid.poller").error("shown")
        err = capsys.readouterr().err.splitlines()
        assert err == ["<4>autogrid.api: careful", "<3>autogrid.poller: shown"]
    finally:
        logging.getLogger("autogrid.poller").setLevel(logging.NOTSET)
        for h in list(logging.getLogger().handlers):
            logging.getLogger().removeHandler(h)
