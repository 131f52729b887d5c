"""The cluster component's bookkeeping without etcd: which devices are this gateway's and
which the others' (held offline until published), across a config reload; a changed
cluster section needs a restart."""

from __future__ import annotations

from pathlib import Path

from gateway.cluster.component import ClusterComponent
from gateway.cluster.etcdproc import EtcdCluster
from gateway.cluster.store import StandaloneStore
from gateway.config.models import SiteConfig
from gateway.daemon import Daemon
from gateway.model import Quality
from tests.cluster_site import site_dict


def test_own_and_remote_devices_follow_a_reload(tmp_path: Path) -> None:
    etcd = EtcdCluster.loopback(["gw-a", "gw-b"], tmp_path / "etcd")  # (not started)
    raw = site_dict(tmp_path, etcd, ["gw-a", "gw-b"])
    daemon = Daemon(SiteConfig.model_validate(raw), "gw-b")
    comp = ClusterComponent(daemon, StandaloneStore("gw-b", None))
    assert comp.own == ["ev_a", "ev_b"]
    assert comp.remote["meter"] == "gw-a" and "ev_a" not in comp.remote
    assert daemon.ports.cluster is comp
    for dev in raw["devices"]:
        if dev["id"] == "heater":
            dev["gateway"] = "gw-b"
    daemon.cfg = SiteConfig.model_validate(raw)
    comp.rebind(None)
    assert comp.own == ["ev_a", "ev_b", "heater"] and "heater" not in comp.remote
    assert comp.telemetry.own_set == {"ev_a", "ev_b", "heater"}
    for dev in raw["devices"]:
        if dev["id"] == "ev_b":
            dev["gateway"] = "gw-a"
    daemon.cfg = SiteConfig.model_validate(raw)
    comp.rebind(None)
    assert comp.remote["ev_b"] == "gw-a"
    held = daemon.state.devices["ev_b"]
    assert held.health.quality is Quality.OFFLINE and held.endpoint == "via gw-a"


def test_a_changed_cluster_section_needs_a_restart(tmp_path: Path) -> None:
    from gateway.config.loader import load_config
    from gateway.service.reload import plan
    from tests.cluster_site import write_site

    etcd = EtcdCluster.loopback(["gw-a", "gw-b"], tmp_path / "etcd")  # (not started)
    raw = site_dict(tmp_path, etcd, ["gw-a", "gw-b"])
    old = load_config(str(write_site(tmp_path / "old.yaml", raw)))
    raw["cluster"]["lease_ttl_s"] = 4
    new = load_config(str(write_site(tmp_path / "new.yaml", raw)))
    assert plan(old, new, "gw-a").need_restart == ["cluster"]
    assert plan(old, old, "gw-a").need_restart == []
