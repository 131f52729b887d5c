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
from tests.cluster_sim_site import site_dict


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
    from tests.cluster_sim_site import write_site

    etcd = EtcdCluster.loopback(["gw-a", "gw-b"], tmp_path / "etcd")  # (not started)
    raw = site_dict(tmp_path, etcd, ["gw-a", "gw-b"])
    old = load_config(str(write_site(tmp_path / "old.yaml", raw)))
    raw["cluster"]["lease_ttl_s"] = 4
    new = load_config(str(write_site(tmp_path / "new.yaml", raw)))
    assert plan(old, new, "gw-a").need_restart == ["cluster"]
    assert plan(old, old, "gw-a").need_restart == []


async def test_only_fresh_setpoints_of_own_devices_reach_the_applier(tmp_path: Path) -> None:
    import time

    from gateway.alarms import AlarmStore
    from gateway.cluster.store import Change
    from gateway.control.applier import Applier

    etcd = EtcdCluster.loopback(["gw-a", "gw-b"], tmp_path / "etcd")  # (not started)
    daemon = Daemon(SiteConfig.model_validate(site_dict(tmp_path, etcd, ["gw-a", "gw-b"])),
                    "gw-b")
    applier = Applier({}, daemon.state, AlarmStore(None))
    daemon.ports.applier = applier
    comp = ClusterComponent(daemon, StandaloneStore("gw-b", None))
    now = time.time()

    def sp(term: int, at: float, kw: float) -> dict[str, object]:
        return {"points": {"p_set_kw": kw}, "writer": "gw-a", "term": term, "at": at}
    comp._on_setpoint(Change("setpoints/ev_a", sp(5, now, 3.0), 10))
    assert comp.applied["ev_a"] == (10, {"p_set_kw": 3.0})
    comp._on_setpoint(Change("setpoints/ev_a", sp(4, now, 9.0), 11))  # an older term
    comp._on_setpoint(Change("setpoints/ev_a", sp(6, now - 3600, 7.0), 12))  # an hour old
    comp._on_setpoint(Change("setpoints/meter", sp(6, now, 1.0), 13))  # not gw-b's
    assert comp.applied == {"ev_a": (10, {"p_set_kw": 3.0})}
    comp._on_setpoint(Change("setpoints/ev_a", sp(6, now, 4.0), 14))
    assert comp.applied["ev_a"] == (14, {"p_set_kw": 4.0})
    await applier.stop()


async def test_only_the_leader_plans(tmp_path: Path) -> None:
    import pytest

    from gateway.api import ApiError
    from gateway.cluster.etcd_store import EtcdStore
    from gateway.control.scheduler_component import SchedulerComponent

    etcd = EtcdCluster.loopback(["gw-a", "gw-b"], tmp_path / "etcd")  # (not started)
    raw = site_dict(tmp_path, etcd, ["gw-a", "gw-b"])
    raw["tariff"] = {"import_per_kwh": 0.3}
    daemon = Daemon(SiteConfig.model_validate(raw), "gw-b")
    store = EtcdStore("gw-b", etcd.members["gw-b"].host_port, "/autogrid/test")  # unused
    comp = ClusterComponent(daemon, store)
    sched = SchedulerComponent(daemon)
    store.leader = "gw-a"
    with pytest.raises(ApiError, match="cluster leader is gw-a"):
        await sched._api_replan({}, None)
    assert sched.runs == 0
    store._set_leadership(True, 7, "gw-b")
    comp._leading.set()  # (seeded: what the component does once it has read the store)
    got = await sched._api_replan({}, None)
    assert sched.runs == 1 and got["status"]
