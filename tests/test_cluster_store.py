"""The cluster store: the standalone file store, and the etcd store against three real etcd
members (election on a lease, fenced writes refused for an old term, watches, resign)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aetcd
import pytest

from gateway.cluster.etcd_store import EtcdStore
from gateway.cluster.etcdproc import EtcdCluster
from gateway.cluster.store import Change, StandaloneStore, StoreFileError
from tests.etcd_cluster import etcd3  # noqa: F401  (fixture)

PREFIX = "/autogrid/test"


async def until(cond: Callable[[], bool], limit_s: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# -- standalone ----------------------------------------------------------------------------
async def test_standalone_leads_term_1_and_persists_all_but_published_keys(
        tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    s = StandaloneStore("gw1", path)
    seen: list[Change] = []
    await s.start()
    assert (s.is_leader, s.term, s.leader) == (True, 1, "gw1")
    cancel = s.watch_prefix("setpoints/", seen.append)
    res = await s.fenced_put({"setpoints/bess1": {"p_set_kw": 5.0}})
    assert res.ok and res.term == 1 and res.revision == 1
    await s.publish("telemetry/gw1", {"x": 1})
    await s.put("reports/bess1", {"p_set_kw": 5.0})
    assert [c.key for c in seen] == ["setpoints/bess1"]
    cancel()
    await s.stop()
    again = StandaloneStore("gw1", path)
    await again.start()
    got = await again.get("setpoints/bess1")
    assert got is not None and got.value == {"p_set_kw": 5.0} and got.revision == 1
    assert await again.get("telemetry/gw1") is None  # leased: gone with the process
    assert [e.key for e in await again.get_prefix("")] == ["reports/bess1", "setpoints/bess1"]
    await again.stop()


async def test_standalone_bad_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    path.write_text("{not json")
    with pytest.raises(StoreFileError) as err:
        await StandaloneStore("gw1", path).start()
    assert str(path) in str(err.value) and "\n" not in str(err.value)


# -- etcd ----------------------------------------------------------------------------------
@pytest.fixture
async def stores(etcd3: EtcdCluster) -> AsyncIterator[dict[str, EtcdStore]]:  # noqa: F811
    out = {name: EtcdStore(name, m.host_port, PREFIX, lease_ttl_s=2)
           for name, m in etcd3.members.items()}
    try:
        for s in out.values():
            await s.start()
        yield out
    finally:
        for s in out.values():
            await s.stop()


def leaders(stores: dict[str, EtcdStore]) -> list[str]:
    return [n for n, s in stores.items() if s.is_leader]


async def test_one_leader_and_only_it_writes_fenced(stores: dict[str, EtcdStore]) -> None:
    await until(lambda: len(leaders(stores)) == 1
                and all(s.leader == leaders(stores)[0] for s in stores.values()))
    lead = stores[leaders(stores)[0]]
    other = next(s for s in stores.values() if s is not lead)
    assert other.term == lead.term
    ok = await lead.fenced_put({"setpoints/bess1": {"p_set_kw": 3.0, "writer": lead.gateway}})
    assert ok.ok and ok.revision is not None and ok.term == lead.term
    refused = await other.fenced_put({"setpoints/bess1": {"p_set_kw": -9.0}})
    assert not refused.ok and not refused.unknown and refused.reason == "not the leader"
    got = await other.get("setpoints/bess1")
    assert got is not None and got.value["p_set_kw"] == 3.0 and got.revision == ok.revision


async def test_old_term_write_is_refused_by_etcd_and_steps_down(
        stores: dict[str, EtcdStore], etcd3: EtcdCluster) -> None:  # noqa: F811
    await until(lambda: len(leaders(stores)) == 1)
    old = stores[leaders(stores)[0]]
    old_term = old.term
    # The old leader's lease is revoked behind its back (as when it froze past its TTL):
    # its leader key goes and another gateway takes a new term.
    admin = aetcd.Client(*etcd3.members["gw-a"].host_port)
    try:
        await admin.revoke_lease(old.lease_id)
    finally:
        await admin.close()
    await until(lambda: any(s.is_leader and s is not old for s in stores.values()))
    new = next(s for s in stores.values() if s.is_leader and s is not old)
    assert new.term is not None and old_term is not None and new.term > old_term
    assert (await new.fenced_put({"setpoints/bess1": {"p_set_kw": 1.0}})).ok
    # The old leader still believes it leads (a frozen process has seen nothing of this):
    # its write reaches etcd and etcd's compare on the leader key refuses it.
    old._set_leadership(True, old_term, old.gateway)
    old.last_keepalive = old.clock()
    res = await old.fenced_put({"setpoints/bess1": {"p_set_kw": -50.0}})
    assert not res.ok and not res.unknown
    assert res.reason is not None and "refused by fencing" in res.reason
    assert not old.is_leader and old.refused == 1
    got = await new.get("setpoints/bess1")
    assert got is not None and got.value == {"p_set_kw": 1.0}


async def test_lapsed_local_deadline_stops_writes_before_etcd(
        stores: dict[str, EtcdStore]) -> None:
    await until(lambda: len(leaders(stores)) == 1)
    lead = stores[leaders(stores)[0]]
    now = [lead.clock()]
    lead.clock = lambda: now[0]  # frozen local time: no deadline passes on its own
    lead.last_keepalive = now[0]
    assert (await lead.fenced_put({"setpoints/x": {"v": 1}})).ok
    now[0] += lead.ttl  # a keepalive was last sent a whole TTL ago
    res = await lead.fenced_put({"setpoints/x": {"v": 2}})
    assert not res.ok and res.reason is not None and "lease not renewed" in res.reason
    assert not lead.is_leader
    got = await lead.get("setpoints/x")
    assert got is not None and got.value == {"v": 1}


async def test_lapsed_lease_is_revoked_so_the_site_need_not_wait_for_it(
        stores: dict[str, EtcdStore], etcd3: EtcdCluster) -> None:  # noqa: F811
    """A leader whose lease lapsed locally gets a new lease and revokes the old one, which
    may still live at etcd (here something keeps it alive, as a member back from an outage
    extends every lease): its leader key goes and a new term is elected."""
    await until(lambda: len(leaders(stores)) == 1)
    lead = stores[leaders(stores)[0]]
    old_lease, old_term = lead.lease_id, lead.term
    assert old_lease is not None and old_term is not None
    admin = aetcd.Client(*etcd3.members["gw-a"].host_port)

    async def keep_alive() -> None:
        while True:
            await admin.refresh_lease(old_lease)
            await asyncio.sleep(0.3)
    keeper = asyncio.create_task(keep_alive())
    try:
        now = [lead.clock()]
        lead.clock = lambda: now[0]
        now[0] += lead.ttl  # its last keepalive was sent a whole TTL ago: lapsed
        await until(lambda: any(s.is_leader and s.term is not None and s.term > old_term
                                for s in stores.values()))
        assert lead.lease_id != old_lease
        ttl = await admin.get_lease_info(old_lease)
        assert ttl.TTL == -1  # revoked, though kept alive the whole time
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await keeper
        await admin.close()


async def test_sole_member_back_after_an_outage_is_reached_with_a_fresh_client(
        tmp_path: Path) -> None:
    """One member only (no other to switch to): while it is down the store makes fresh
    clients to it (gRPC's own redial backs off for up to two minutes), and once it is back
    the gateway leads again."""
    cluster = EtcdCluster.loopback(["solo"], tmp_path / "etcd", unsafe_no_fsync=True)
    cluster.start()
    store = EtcdStore("gw", cluster.members["solo"].host_port, PREFIX, lease_ttl_s=2)
    try:
        await store.start()
        await until(lambda: store.is_leader)
        await asyncio.to_thread(cluster.kill, "solo")
        await until(lambda: store.keepalive_failures >= 8 and not store.is_leader,
                    limit_s=30.0)
        assert store.status()["member_redials"] >= 2
        await asyncio.to_thread(cluster.restart, "solo")
        await until(lambda: store.is_leader and store.keepalive_failures == 0,
                    limit_s=30.0)
        assert store.status()["own_endpoint"] and store.switches == 0
    finally:
        await store.stop()
        cluster.close()


async def test_resign_hands_over_and_watch_sees_published_key_go(
        stores: dict[str, EtcdStore]) -> None:
    await until(lambda: len(leaders(stores)) == 1)
    lead = stores[leaders(stores)[0]]
    watcher = next(s for s in stores.values() if s is not lead)
    seen: list[Change] = []
    cancel = watcher.watch_prefix("telemetry/", seen.append)
    await lead.publish(f"telemetry/{lead.gateway}", {"ok": True})
    await until(lambda: any(c.value == {"ok": True} for c in seen))
    old_term = lead.term
    await lead.stop()  # resigns and revokes its lease
    await until(lambda: any(c.value is None for c in seen))
    assert seen[-1].key == f"telemetry/{lead.gateway}"
    await until(lambda: any(s.is_leader for s in stores.values() if s is not lead),
                limit_s=5.0)
    new = next(s for s in stores.values() if s.is_leader)
    assert new.term is not None and old_term is not None and new.term > old_term
    cancel()


def test_values_are_json_objects() -> None:
    from gateway.cluster.etcd_store import _dump, _load
    assert _load(_dump({"a": 1.5})) == {"a": 1.5}
    assert "_invalid" in _load(b"\xff not json") and "_invalid" in _load(json.dumps([1]).encode())


def test_readme_cluster_example_is_a_valid_section() -> None:
    import re

    import yaml

    from gateway.cluster.config import ClusterConfig
    from tests.conftest import REPO
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(cluster:\n  backend: etcd\n.*?)```", readme, re.S)
    assert block is not None
    cfg = ClusterConfig.model_validate(yaml.safe_load(block.group(1))["cluster"])
    assert cfg.backend == "etcd" and len(cfg.members) == 3 and cfg.allow_plaintext


async def test_election_and_fenced_writes_over_tls(tmp_path: Path) -> None:
    """The daemon's store over the site's TLS client (client certificates, site CA)."""
    from gateway.cluster.tlsclient import TlsClient, client_for
    from tests.etcd_tls_members import tls_site

    with tls_site(tmp_path, ["gw-a", "gw-b", "gw-c"]) as site:
        def store(gw: str) -> EtcdStore:
            member = site.cluster.member(gw)
            assert member is not None
            return EtcdStore(gw, ("127.0.0.1", site.client_port(gw)), PREFIX,
                             client_factory=lambda: client_for(site.cluster, gw,
                                                               config_dir=site.root))
        a, b = store("gw-a"), store("gw-b")
        assert isinstance(a.client, TlsClient)
        try:
            await a.start()
            await until(lambda: a.is_leader)
            await b.start()
            await until(lambda: b.leader == "gw-a" and b.term == a.term)
            assert (await a.fenced_put({"setpoints/x": {"v": 1}})).ok
            assert not (await b.fenced_put({"setpoints/x": {"v": 2}})).ok
            got = await b.get("setpoints/x")
            assert got is not None and got.value == {"v": 1}
        finally:
            await b.stop()
            await a.stop()


async def test_a_peer_lease_is_revoked_once_expired_never_while_renewed_late(
        stores: dict[str, EtcdStore], etcd3: EtcdCluster) -> None:  # noqa: F811
    """The reaper watches the leader's lease from the leader key, and any lease it is
    given; a lease renewed late but in time (1.4 s apart on a 2 s TTL, so etcd shows it
    with 0 s left for 0.4 s each time) is never revoked; once renewals stop it goes, and
    if the reaper (not etcd's sweep) ended it, not before it expired."""
    import time

    await until(lambda: len(leaders(stores)) == 1
                and all(s.leader == leaders(stores)[0] for s in stores.values()))
    lead = stores[leaders(stores)[0]]
    watcher = next(s for s in stores.values() if s is not lead)
    await until(lambda: watcher.peer_leases.get("leader") == lead.lease_id)
    admin = aetcd.Client(*etcd3.members["gw-a"].host_port)
    try:
        lease = (await admin.lease(2)).id
        watcher.watch_lease("peer", lease)
        last_sent = time.monotonic()
        for _ in range(5):
            await asyncio.sleep(1.4)
            last_sent = time.monotonic()
            await admin.refresh_lease(lease)
        assert watcher.reaped == []
        assert (await admin.get_lease_info(lease)).TTL >= 0  # alive
        await until(lambda: "peer" not in watcher.peer_leases, limit_s=10.0)
        assert (await admin.get_lease_info(lease)).TTL == -1
        for _who, gone, at in watcher.reaped:
            assert gone == lease and at >= last_sent + 2.0, \
                f"revoked {last_sent + 2.0 - at:.3f} s before it could have expired"
            print(f"\nrevoked by the reaper {at - last_sent - 2.0:.3f} s after the "
                  f"earliest moment it could have expired")
    finally:
        await admin.close()
