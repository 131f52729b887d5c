"""A 3-member etcd cluster on loopback for the cluster tests (real etcd processes).

Use it by importing the fixture into a test module: ``from tests.etcd_cluster import etcd3``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cluster.etcdproc import EtcdCluster, EtcdNotFound

NAMES = ["gw-a", "gw-b", "gw-c"]


@pytest.fixture
def etcd3(tmp_path: Path) -> Iterator[EtcdCluster]:
    """Three members named like the gateways beside them, healthy; all ended afterwards."""
    try:
        cluster = EtcdCluster.loopback(NAMES, tmp_path / "etcd", unsafe_no_fsync=True)
    except EtcdNotFound as exc:
        pytest.fail(str(exc))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()

