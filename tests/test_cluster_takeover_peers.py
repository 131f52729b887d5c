"""Takeover in process (two daemons, three real etcd members, the simulated site): a
cleanly stopped owner lets go of its battery and the standby takes it; a peer's malformed
``live/`` or ``owners/`` key neither crashes a gateway nor makes it take a device early:
a ``live`` key without a list of devices counts as holding them all."""

from __future__ import annotations

from pathlib import Path

from gateway.cluster.etcd_store import EtcdStore
from gateway.cluster.etcdproc import EtcdCluster
from tests.cluster_sim_site import site
from tests.etcd_cluster import etcd3  # noqa: F401  (fixture)
from tests.test_cluster_daemon import comp, gateways
from tests.waiting import until


async def test_stopped_owner_lets_go_and_a_garbled_peer_key_holds_the_standby_back(
        tmp_path: Path, etcd3: EtcdCluster) -> None:  # noqa: F811
    cfg = site(tmp_path, etcd3, ["gw-a", "gw-b"], standby={"bat": ["gw-b"]},
               handback_after_s=3600)
    observer = EtcdStore("observer", etcd3.members["gw-b"].host_port, "/autogrid/test",
                         campaign=False)
    await observer.start()
    try:
        async with gateways(cfg, ["gw-b", "gw-a"]) as (_runner, ds):
            a, b = comp(ds["gw-a"]).takeover, comp(ds["gw-b"]).takeover
            await until(lambda: a.held == {"bat"}, "gw-a holding its battery",
                        timeout_s=30)
            assert "bat" in ds["gw-a"].ios and "bat" not in ds["gw-b"].ios
            # A peer that says nonsense: a live key without a device list, a bad record.
            await observer.put("live/gw-x", {"lease": 1, "holding": 7})
            await observer.put("owners/bat", {"gateway": 5})
            await until(lambda: "gw-x" in b.live, "gw-b reading the garbled key")
            assert b.live["gw-x"]["holding"] == ["bat"]
            assert b.records["bat"]["gateway"] == "gw-a"  # the bad record was ignored
            await ds["gw-a"].shutdown()  # lets go, then revokes its lease
            await until(lambda: b.records.get("bat", {}).get("gateway") == "gw-b",
                        "the leader giving the battery to gw-b", timeout_s=30)
            rounds = b.rounds
            await until(lambda: b.rounds >= rounds + 10, "gw-b reconciling")
            assert b.held == set() and "bat" not in ds["gw-b"].ios, \
                "gw-b took the battery while a peer might still hold it"
            await observer.put("live/gw-x", {"lease": 1, "holding": []})
            await until(lambda: b.held == {"bat"}, "gw-b holding the battery",
                        timeout_s=30)
            assert "bat" in ds["gw-b"].ios and not ds["gw-b"].state.devices["bat"] \
                .endpoint.startswith("via")
    finally:
        await observer.stop()
