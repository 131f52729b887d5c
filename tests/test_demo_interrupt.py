"""Ctrl-C of the demo after a training started: the terminal sends SIGINT to the whole
process group, the training worker included; the demo stops cleanly and nobody prints a
traceback."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

from gateway.apiclient import ApiClient
from tests.test_cli import AUTOGRID, env_for


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_ctrl_c_after_a_training_started_prints_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.Popen([*AUTOGRID, "demo"], cwd=tmp_path, env=env_for(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group, as in a terminal
    try:
        sock = tmp_path / "autogrid-gw1.sock"
        deadline = time.monotonic() + 60
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sock.exists(), "the demo did not come up"

        async def train() -> None:
            async with ApiClient(sock) as c:
                await c.request("analytics_train")
        asyncio.run(train())
        deadline = time.monotonic() + 60  # the training worker process is running
        while not children(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert children(proc.pid), "no training worker started"
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err, err
    assert "stopped" in out
