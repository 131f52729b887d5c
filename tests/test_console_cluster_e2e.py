"""The real `autogrid console --screen cluster` in tmux, at 80x24 and 120x40, against three
`autogrid run` gateways on three real etcd members and the simulated site: members,
leader and term, leases and devices per gateway, the operator's mode as stored; a killed
gateway shows as gone, a stopped etcd member as down, and the `c` key reaches the screen
from another one."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gateway.cluster.etcdproc import EtcdCluster
from tests.etcd_cluster import etcd3  # noqa: F401  (fixture)
from tests.test_cli import AUTOGRID, env_for
from tests.test_cluster_failover import GWS, cluster_site, start_with_leader
from tests.test_console_e2e import Tmux, artifacts  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def open_console(tm: Tmux, name: str, gw: str, cols: int, rows: int, *extra: str) -> None:
    env = {**env_for(tm.tmp), "LANG": "C.UTF-8", "TERM": "screen"}
    env_args = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()
                        if k in ("PYTHONPATH", "RUNTIME_DIRECTORY", "LANG", "TERM", "PATH",
                                 "HOME"))
    cmd = (f"cd {shlex.quote(str(tm.tmp))} && env -i {env_args} "
           f"{' '.join(shlex.quote(a) for a in AUTOGRID)} console "
           f"-c {shlex.quote(str(tm.tmp / 'site.yaml'))} --gateway {gw} {' '.join(extra)} "
           f"2> {shlex.quote(str(tm.tmp / (name + '.err')))}; echo CONSOLE-EXIT=$?; sleep 60")
    subprocess.run(["tmux", "-L", tm.sock, "new-session", "-d", "-s", name, "-x", str(cols),
                    "-y", str(rows), cmd], check=True, timeout=10)
    tm.session = name


async def test_cluster_screen_in_tmux(tmp_path: Path, etcd3: EtcdCluster,  # noqa: F811
                                      artifacts: Path) -> None:  # noqa: F811
    async with cluster_site(tmp_path, etcd3) as s:
        term = await start_with_leader(s, "gw-a")
        lead, follower = "gw-a", "gw-b"

        async def knows() -> bool:
            try:
                st = await s.api(follower, "cluster")
            except Exception:
                return False
            return bool(st["leader"] == lead)
        deadline = time.monotonic() + 60
        while not await knows():
            assert time.monotonic() < deadline, f"{follower} never saw {lead} lead"
            await asyncio.sleep(0.1)
        # An operator's island, given on a follower and carried out by the leader.
        m = await s.api(follower, "mode_request", mode="island", reason="drill")
        assert m["carried_out_by"] == lead and m["mode"] == "island", m
        tm = Tmux(tmp_path, artifacts)
        try:
            # 120x40: everything at once.
            open_console(tm, "wide", follower, 120, 40, "--screen", "cluster")
            screen = await asyncio.to_thread(
                tm.wait_for, f"Leader {lead} term {term}", f"this gateway {follower} "
                f"(follower)", "State ok", "mode island (held by an operator)",
                "Takeovers (0)", save="cluster-120x40")
            for gw in GWS:
                assert f"{gw} " in screen and "alive  lease" in screen
            assert screen.count("up  etcd") == 3, screen
            assert "meter good" in screen and "ev_a good" in screen, screen
            # The follower's Overview shows the site's mode as the leader stored it.
            tm.keys("1")
            await asyncio.to_thread(tm.wait_for, "Site mode island", f"Leader {lead}",
                                    save="follower-overview")
            # ... and its Alarms screen the leader's alarm about it (gw-a raised it).
            tm.keys("7")
            await asyncio.to_thread(tm.wait_for, "site in island mode",
                                    save="follower-alarms")
            tm.keys("c")
            await asyncio.to_thread(tm.wait_for, "Members", save="cluster-again")
            # A gateway killed: its lease runs out and the screen says it is gone.
            gone = next(g for g in GWS if g not in (lead, follower))
            s.procs[gone].send_signal(signal.SIGKILL)
            s.procs[gone].wait(timeout=10)
            screen = await asyncio.to_thread(tm.wait_for, "GONE (no lease)",
                                             save="cluster-gateway-gone")
            assert any(gone in ln and "GONE" in ln for ln in screen.splitlines()), screen
            # The killed gateway's etcd member stopped: the member row says DOWN.
            etcd3.stop(gone)
            screen = await asyncio.to_thread(tm.wait_for, "DOWN", save="cluster-member-down")
            assert screen.count("up  etcd") == 2, screen
            tm.kill()
            # 80x24, opened on another screen: `c` reaches the Cluster screen.
            tm = Tmux(tmp_path, artifacts)
            open_console(tm, "narrow", lead, 80, 24)
            await asyncio.to_thread(tm.wait_for, "Overview", save="narrow-overview")
            tm.keys("c")
            screen = await asyncio.to_thread(
                tm.wait_for, f"Leader {lead} term {term}", f"{lead} (LEADER)", "State ok",
                save="cluster-80x24")
            assert all(len(ln) <= 80 for ln in screen.splitlines())
        finally:
            tm.kill()
            for p in s.procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in s.procs.values():
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait()
