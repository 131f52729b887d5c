"""Forecast training from the console, as an operator does it: `t` on the analytics screen
of a fresh demo (no history to train on) says that the training FAILED and why, never
"Done"; the failure is an alarm of its own (not an anomaly) that acknowledging ends.
The real `autogrid console` runs in tmux against `autogrid demo` (tests/test_console_e2e).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gateway.apiclient import ApiClient
from tests.test_console_e2e import (  # noqa: F401  (fixtures used by name)
    TOKEN,
    Tmux,
    artifacts,
    demo,
    pytestmark,
)

KEY = "analytics.training:forecast"


def request(sock: Path, cmd: str) -> Any:
    async def get() -> Any:
        async with ApiClient(sock) as c:
            return await c.request(cmd)
    return asyncio.run(get())


def test_training_failure_shown_as_failure_and_cleared_by_ack(
        demo: Path, tmp_path: Path, artifacts: Path) -> None:  # noqa: F811
    tm = Tmux(tmp_path, artifacts)
    try:
        tm.session = "operator"
        tm.start("operator", {"AUTOGRID_TOKEN": TOKEN})
        tm.wait_for("AutoGrid ▸ Overview", "(operator)", save="training-overview")
        tm.keys("6")
        tm.wait_for("Forecast vs actual", "no forecast model yet", save="training-before")
        tm.keys("t")
        s = tm.wait_for("Forecast training FAILED", "history", save="training-failed")
        assert "Done" not in s
        s = tm.wait_for("last training failed", save="training-failed-line")
        assert "no anomalies" in s  # a failed training is not an anomaly
        alarms = {a["key"]: a for a in request(demo, "alarms")}
        assert alarms[KEY]["active"] and "history" in alarms[KEY]["message"]
        assert not [k for k, a in alarms.items() if k.startswith("analytics/") and a["active"]]

        tm.keys("7")
        tm.wait_for("forecast training v1 failed", "critical", save="training-alarm")
        tm.keys("Down", "a")  # the protection alarm (critical) is first, then this one
        tm.wait_for(f"Done: acknowledge alarm {KEY}", save="training-acked")
        alarms = {a["key"]: a for a in request(demo, "alarms")}
        assert not alarms[KEY]["active"] and alarms[KEY]["acked_by"].startswith("op-anna")
        tm.keys("q")
        tm.wait_for("CONSOLE-EXIT=0")
        err = (tmp_path / "operator.err").read_text()
        assert "Traceback" not in err, err
    finally:
        tm.kill()
