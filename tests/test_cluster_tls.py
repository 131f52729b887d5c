"""etcd with TLS and client certificates, as a site runs it: three real members started from
what `autogrid cluster certs` and `autogrid cluster etcd-config` write, talking to each
other over TLS. A gateway's certificate gets it in; no certificate, a plaintext client, a
certificate from another CA, or a server it cannot verify does not."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import aetcd
import aetcd.exceptions
import pytest
import yaml

from gateway.cluster.certs import issue
from gateway.cluster.config import ClusterConfig
from gateway.cluster.tlsclient import TlsClient, client_for
from tests.cluster_site import site_yaml
from tests.etcd_tls_members import TlsSite, tls_site
from tests.tcp_fault_proxy import TcpFaultProxy

GATEWAYS = ["gw-a", "gw-b", "gw-c"]
TIMEOUT_S = 5  # each etcd call; a refused one fails at once, this only bounds a hang


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsSite]:
    with tls_site(tmp_path_factory.mktemp("tls-site"), GATEWAYS) as running:
        yield running


def _client(site: TlsSite, member: str, ca: Path, cert: Path | None = None,
            key: Path | None = None) -> TlsClient:
    return TlsClient("127.0.0.1", site.client_port(member), ca=ca, cert=cert, key=key,
                     timeout=TIMEOUT_S)


async def test_gateway_certificate_writes_and_the_peers_replicate(site: TlsSite) -> None:
    # the client each gateway builds from the site config: its member, its certificate
    async with client_for(site.cluster, "gw-a", config_dir=site.root,
                          timeout=TIMEOUT_S) as client:
        assert isinstance(client, TlsClient)
        await client.put(b"/autogrid/tls-test", b"from gw-a")
    async with client_for(site.cluster, "gw-c", config_dir=site.root,  # another member
                          timeout=TIMEOUT_S) as client:
        got = await client.get(b"/autogrid/tls-test")
    assert got is not None and got.value == b"from gw-a"


async def _refused(client: aetcd.Client, key: bytes) -> None:
    with pytest.raises(aetcd.exceptions.ClientError) as caught:
        async with client:
            await client.put(key, b"must not land")
    text = str(caught.value).lower()
    # grpc's poller thread ends only when its last channel object is freed, and the
    # traceback holds the failed call in a cycle: free it now, not at some later GC.
    del caught
    gc.collect()
    # refused by TLS (with TLS 1.3 the client may learn it only at its first read: etcd
    # 3.4.23's Go sends the alert after the handshake, as an undecryptable record)
    assert any(word in text for word in ("handshake", "ssl", "tsi_")), text


async def _absent(site: TlsSite, key: bytes) -> bool:
    ca, cert, key_file = site.tls_files("gw-b")
    async with _client(site, "gw-b", ca, cert, key_file) as client:
        return await client.get(key) is None


async def test_client_without_certificate_is_refused(site: TlsSite) -> None:
    ca, _cert, _key = site.tls_files("gw-a")
    await _refused(_client(site, "gw-a", ca), b"/autogrid/no-cert")
    assert await _absent(site, b"/autogrid/no-cert")


async def test_plaintext_client_is_refused(site: TlsSite) -> None:
    client = aetcd.Client("127.0.0.1", site.client_port("gw-a"), timeout=TIMEOUT_S)
    with pytest.raises(aetcd.exceptions.ClientError):
        async with client:
            await client.put(b"/autogrid/plain", b"must not land")
    del client
    gc.collect()
    assert await _absent(site, b"/autogrid/plain")


async def test_certificate_of_another_ca_is_refused(site: TlsSite, tmp_path: Path) -> None:
    other = tmp_path / "other-site"
    issue(site.cluster, GATEWAYS, "another site", other)  # same names, another CA
    ca, _cert, _key = site.tls_files("gw-a")
    await _refused(_client(site, "gw-a", ca, other / "gw-a.crt", other / "gw-a.key"),
                   b"/autogrid/other-ca")
    assert await _absent(site, b"/autogrid/other-ca")
    # and a gateway that trusts only the other CA does not accept the site's member
    await _refused(_client(site, "gw-a", other / "ca.crt", other / "gw-a.crt",
                           other / "gw-a.key"), b"/autogrid/other-ca")


async def _put_until_ok(client: TlsClient, key: bytes, value: bytes) -> None:
    """Retry (bounded) while gRPC notices the broken connection and dials again."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        try:
            await client.put(key, value)
            return
        except aetcd.exceptions.ClientError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_gateway_cut_off_by_the_fault_proxy(site: TlsSite) -> None:
    async with TcpFaultProxy("127.0.0.1", site.client_port("gw-a")) as proxy:
        # the proxy listens on 127.0.0.1 too, so the member's IP SAN still matches
        client = client_for(site.cluster, "gw-a", config_dir=site.root,
                            endpoint=("127.0.0.1", proxy.port), timeout=2)
        async with client:
            await client.put(b"/autogrid/proxy", b"through")
            proxy.set_mode("black-hole")
            with pytest.raises(aetcd.exceptions.ClientError):  # its deadline, not an answer
                await client.put(b"/autogrid/proxy", b"into the void")
            assert proxy.stats.swallowed > 0
            proxy.set_mode("drop")
            with pytest.raises(aetcd.exceptions.ClientError):
                await client.put(b"/autogrid/proxy", b"dropped")
            proxy.set_mode("pass")
        del client
        gc.collect()
        # The link is back: a fresh client, as the store makes on every switch (gRPC's own
        # redial of a channel that failed backs off for up to minutes), writes through it.
        again = client_for(site.cluster, "gw-a", config_dir=site.root,
                           endpoint=("127.0.0.1", proxy.port), timeout=2)
        async with again:
            await _put_until_ok(again, b"/autogrid/proxy", b"back")
            got = await again.get(b"/autogrid/proxy")
        del again
        gc.collect()
    assert got is not None and got.value == b"back"


def test_client_for_a_plaintext_site_and_for_a_gateway_without_member() -> None:
    plain = ClusterConfig.model_validate(
        yaml.safe_load(site_yaml(GATEWAYS, [1, 2, 3, 4, 5, 6], tls=False))["cluster"])
    client = client_for(plain, "gw-b", config_dir=Path("/nonexistent"))
    assert type(client) is aetcd.Client  # allow_plaintext: no TLS, no certificate files
    with pytest.raises(ValueError, match="'gw-x' has no etcd member"):
        client_for(plain, "gw-x", config_dir=Path("/nonexistent"))


def test_store_switches_to_another_member_over_tls_keeping_lease_and_watch(
        site: TlsSite) -> None:
    """gw-a's own member is cut off (black-holed): its store goes on through another
    member with gw-a's certificate, on the same lease and term, and its watch sees a write
    made after the switch. In a child process: failed grpc calls keep grpc's poller
    thread alive in the process that made them."""
    import json
    import subprocess
    import sys

    arg = json.dumps({"root": str(site.root), "config": str(site.config)})
    out = subprocess.run(
        [sys.executable, "-c", "import asyncio, json, sys, tests.test_cluster_tls as t; "
         "print(json.dumps(asyncio.run(t.switch_scenario(json.loads(sys.argv[1])))))", arg],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["switched_to"] != got["own"] and got["switches"] >= 1, got
    assert got["lease_after"] == got["lease_before"], got  # renewed through another member
    assert got["term_after"] == got["term_before"] and got["leads"], got
    assert got["watch_saw_later_write"], got


async def switch_scenario(arg: dict[str, str]) -> dict[str, object]:
    from gateway.cluster.config import endpoint_of
    from gateway.cluster.etcd_store import EtcdStore
    from gateway.config.loader import load_config
    from tests.waiting import until

    root = Path(arg["root"])
    cl = load_config(Path(arg["config"])).config.cluster
    assert cl is not None
    own = cl.member("gw-a")
    assert own is not None
    own_ep = endpoint_of(own.client_url)
    async with TcpFaultProxy(*own_ep) as proxy:
        others = [(endpoint_of(m.client_url),
                   lambda g=m.gateway: client_for(cl, "gw-a", config_dir=root, member_of=g))
                  for m in cl.members if m.gateway != "gw-a"]
        store = EtcdStore("gw-a", ("127.0.0.1", proxy.port), "/autogrid/switch-test",
                          client_factory=lambda: client_for(
                              cl, "gw-a", config_dir=root,
                              endpoint=("127.0.0.1", proxy.port)),
                          others=others)
        seen: list[str] = []
        await store.start()
        try:
            cancel = store.watch_prefix("x/", lambda ch: seen.append(ch.key))
            await until(lambda: store.is_leader, "the only gateway leads", timeout_s=20)
            lease, term = store.lease_id, store.term
            proxy.set_mode("black-hole")
            await until(lambda: store.current != 0 and store.keepalive_failures == 0,
                        "keepalives through another member", timeout_s=20)
            await until(lambda: store.is_leader, "leading again", timeout_s=20)
            async with client_for(cl, "gw-c", config_dir=root, timeout=TIMEOUT_S) as other:
                await other.put(b"/autogrid/switch-test/x/after", b"{}")
            await until(lambda: "x/after" in seen, "the watch resumed", timeout_s=20)
            cancel()
            return {"own": list(own_ep), "switched_to": list(store.endpoint),
                    "switches": store.switches, "lease_before": lease,
                    "lease_after": store.lease_id, "term_before": term,
                    "term_after": store.term, "leads": store.is_leader,
                    "watch_saw_later_write": "x/after" in seen}
        finally:
            await store.stop()
