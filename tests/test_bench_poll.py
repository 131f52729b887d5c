"""bench/poll.py: its argument checks and the per-round ratios it prints (no servers run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.poll import _ratios

REPO = Path(__file__).resolve().parent.parent


def _round(rnd: int, reads: int, user: float, system: float, share: float = 1.0,
           server: float = 0.2) -> dict[str, Any]:
    cpu = user + system
    return {"round": rnd, "reads": reads, "points": reads * 10, "seconds": 10.0,
            "user_s": user, "sys_s": system, "cpu_s": cpu, "reads_per_s": reads / 10.0,
            "points_per_s": reads, "cpu_s_per_1000": cpu / reads * 1000,
            "client_share": share, "server_share": server}


def test_user_cpu_ratio_is_computed_apart_from_kernel_time() -> None:
    ours = [_round(0, 2000, user=4.0, system=1.0)]
    base = [_round(0, 1000, user=4.0, system=4.0)]
    got, refused = _ratios(ours, base)
    assert refused == []
    assert got["reads"] == [2.0]
    assert got["cpu"] == [(5.0 / 2000) / (8.0 / 1000)]
    assert got["user"] == [(4.0 / 2000) / (4.0 / 1000)]


def test_a_round_with_a_starved_side_gives_no_ratio() -> None:
    ours = [_round(0, 2000, 4.0, 1.0), _round(1, 2000, 2.0, 0.5, share=0.25)]
    base = [_round(0, 1000, 4.0, 4.0), _round(1, 1000, 4.0, 4.0)]
    got, refused = _ratios(ours, base)
    assert len(got["user"]) == 1 and len(got["cpu"]) == 1
    assert refused == ["round 2: the client got only 25 % of a core (starved)"]


def test_unknown_client_is_one_line_error() -> None:
    r = subprocess.run([sys.executable, "bench/poll.py", "--clients", "autogrid,nope"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "--clients: unknown nope (known: autogrid, autogrid-pymodbus, autogrid-pipe, "
        "bare, socket, naive)"]
