"""`autogrid demo --gateways 3`: three etcd members, the simulated demo site split over
three gateway daemons run as one cluster, a summary naming the leader; it stops by itself
and ends every child process."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.test_cli import AUTOGRID, env_for


def test_cluster_demo_runs_names_the_leader_and_stops(tmp_path: Path) -> None:
    r = subprocess.run([*AUTOGRID, "demo", "--gateways", "3", "--duration", "8",
                        "--interval", "2"], cwd=tmp_path, env=env_for(tmp_path),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert "over 3 gateways (gw-a, gw-b, gw-c) and 3 etcd members" in r.stdout
    leads = re.findall(r"^leader (gw-[abc]) \(term (\d+)\); gw-a \d+/\d+ ok, gw-b \d+/\d+ ok, "
                       r"gw-c \d+/\d+ ok \| .*mode normal", r.stdout, re.M)
    assert leads, r.stdout
    assert r.stdout.rstrip().endswith("gateways, devices and etcd members ended.")
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "autogrid-cluster-demo-" not in ps  # no etcd member left behind


def test_too_many_gateways_is_one_line(tmp_path: Path) -> None:
    r = subprocess.run([*AUTOGRID, "demo", "--gateways", "9", "--duration", "1"],
                       cwd=tmp_path, env=env_for(tmp_path), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and "--gateways: at most 7" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
