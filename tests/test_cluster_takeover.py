"""Device takeover with real processes: three etcd members, three `autogrid run` gateways
and the simulated site on loopback. The battery names gw-b as its standby; gw-c leads and
polls nothing. SIGKILL gw-a (the battery's owner): gw-b polls the battery (the time is
printed) and the leader's setpoints go on without gw-a's other devices; gw-a returns and
gets the battery back after handback_after_s; an operator moves it (and is refused where
not allowed). The store's history is checked (fencing, ownership records of the term's
leader) and no two gateways ever held the battery at the same time, every write to it
made by the gateway that held it then: by the gateways' own logs, and by the battery's
write journal (who connected from where) against the store's ownership records."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from gateway.apiclient import ApiRequestError, ApiUnavailable
from gateway.cluster.etcdproc import EtcdCluster
from tests.cluster_history import check_history, check_ownership, read_history
from tests.cluster_sim_site import (
    POLL_S,
    SOURCES,
    device_writes,
    journal_rows,
    writers,
)
from tests.etcd_cluster import etcd3  # noqa: F401  (fixture)
from tests.test_cli import AUTOGRID, env_for
from tests.test_cluster_failover import (
    GWS,
    PREFIX,
    Site,
    cluster_site,
    cluster_status,
    start_with_leader,
)
from tests.waiting import until, until_async

HANDBACK_S = 3.0
STANDBY = {"bat": ["gw-b"]}


@asynccontextmanager
async def takeover_site(tmp: Path, etcd: EtcdCluster, via: dict[str, int] | None = None
                        ) -> AsyncIterator[tuple[Site, list[tuple[float, str]]]]:
    """The site with the battery's standby, observed from gw-c's member; ``via``: gateway ->
    a proxy port in front of its etcd member (a gateway cut off from its member is then cut
    off from all: no switching). Yields the site and its setpoint keys as committed."""
    async with cluster_site(tmp, etcd, via=via, observe="gw-c", switch_members=not via,
                            standby=STANDBY, handback_after_s=HANDBACK_S) as s:
        yield s, s.keys


async def owner(s: Site, dev: str) -> str | None:
    e = await s.observer.get(f"owners/{dev}")
    return None if e is None else str(e.value.get("gateway"))


async def polls(s: Site, gw: str, dev: str, after: float) -> bool:
    """``gw`` polls ``dev`` itself (not via another gateway) and read it after ``after``."""
    try:
        snap = await s.api(gw, "snapshot")
    except (OSError, ApiRequestError, ApiUnavailable):
        return False
    d = snap["devices"].get(dev) or {}
    return (not str(d.get("endpoint", "")).startswith("via")
            and (d.get("last_ok") or 0.0) > after)


async def refused(s: Site, gw: str, **params: Any) -> str:
    try:
        await s.api(gw, "device_move", **params)
    except ApiRequestError as exc:
        return str(exc)
    raise AssertionError(f"device_move {params} on {gw} was not refused")


def owned_logs(s: Site) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for gw in GWS:
        p = s.tmp / f"{gw}.cluster-owned.jsonl"
        if p.exists():
            out[gw] = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    return out


async def test_standby_takes_over_hands_back_and_obeys_the_operator(
        tmp_path: Path, etcd3: EtcdCluster) -> None:  # noqa: F811
    async with takeover_site(tmp_path, etcd3) as (s, keys):
        await start_with_leader(s, "gw-c")
        w0 = time.time()
        await until_async(lambda: polls(s, "gw-a", "bat", w0), "gw-a polling its battery",
                          timeout_s=60)
        assert await owner(s, "bat") == "gw-a"
        assert not await polls(s, "gw-b", "bat", 0.0)
        # The owner dies: the standby polls the battery.
        t_kill, w_kill = time.monotonic(), time.time()
        s.procs["gw-a"].send_signal(signal.SIGKILL)
        s.procs["gw-a"].wait(20)
        await until_async(lambda: polls(s, "gw-b", "bat", w_kill), "gw-b polling bat",
                          timeout_s=60, interval_s=0.01)
        took = time.monotonic() - t_kill
        print(f"\nowner SIGKILLed: the standby polls the battery after {took:.2f} s "
              f"(lease TTL 2 s + 2 polls = {2 + 2 * POLL_S:.1f} s)")
        assert await owner(s, "bat") == "gw-b"
        alarms = json.dumps(await s.api("gw-c", "alarms"))
        assert "bat moved from gw-a to gw-b: gw-a's lease ended" in alarms, alarms
        st_cli = await cluster_status(s, "--json")
        gws = {g["gateway"]: g for g in json.loads(st_cli.stdout)["gateways"]}
        assert "bat" in gws["gw-b"]["devices"] and "bat" not in gws["gw-a"]["devices"], gws
        assert gws["gw-b"]["taken_over"] == {"bat": "gw-a"}, gws
        assert "(taken over from gw-a)" in (await cluster_status(s)).stdout
        # The leader dispatches without gw-a's lost heater, with the battery via gw-b.
        w_taken = time.time()
        await until(lambda: any(t > w_taken and k == "setpoints/bat" for t, k in keys),
                    "a battery setpoint after the takeover", timeout_s=30)
        st = await s.api("gw-c", "cluster")
        gone_since = st["gone"]["gw-a"]
        late = [k for t, k in keys if t > gone_since + 1.0 and k == "setpoints/heater"]
        assert not late, f"the leader still dispatched gw-a's heater: {late}"
        assert any(k == "setpoints/heater" for t, k in keys if t < w_kill), \
            "the heater was never dispatched: the check above would prove nothing"
        # The owner returns: it does not poll until handed back, then gw-b lets go.
        w_back = time.time()
        s.start("gw-a")
        await until_async(lambda: answers(s, "gw-a"), "gw-a back", timeout_s=60)
        assert await owner(s, "bat") == "gw-b"
        await until_async(lambda: owner_is(s, "bat", "gw-a"), "the handback", timeout_s=60)
        w1 = time.time()
        await until_async(lambda: polls(s, "gw-a", "bat", w1), "gw-a polling bat",
                          timeout_s=30)
        assert not await polls(s, "gw-b", "bat", 0.0)
        held = (await s.api("gw-c", "cluster"))["takeover"]["moves"][-1]
        assert held["to"] == "gw-a" and "handback" in held["why"], held
        assert held["at"] - w_back >= HANDBACK_S, held
        # Operator moves: refused where not allowed (on a follower too: the leader's
        # refusal), done where allowed.
        assert "cluster leader gw-c" in await refused(s, "gw-a", device="bat",
                                                      gateway="gw-c")
        assert "may not hold" in await refused(s, "gw-c", device="bat", gateway="gw-c")
        assert "no standby_gateways" in await refused(s, "gw-c", device="heater",
                                                       gateway="gw-b")
        no = await autogrid_move(s, "bat", "gw-c", "--on", "gw-b")
        assert no.returncode != 0 and "cluster leader gw-c" in no.stderr, (no.stdout,
                                                                           no.stderr)
        assert "may not hold" in no.stderr, no.stderr
        w2 = time.time()
        got = await s.api("gw-c", "device_move", device="bat", gateway="gw-b")
        assert got["written"] and got["gateway"] == "gw-b"
        await until_async(lambda: polls(s, "gw-b", "bat", w2), "gw-b polling bat",
                          timeout_s=30)
        await asyncio.sleep(HANDBACK_S + 1.0)  # pinned by the operator: no handback
        assert await owner(s, "bat") == "gw-b"
        w3 = time.time()
        back = await autogrid_move(s, "bat", "gw-a", "--on", "gw-c")
        assert back.returncode == 0 and "bat moves to gw-a" in back.stdout, back.stderr
        await until_async(lambda: polls(s, "gw-a", "bat", w3), "gw-a polling bat",
                          timeout_s=30)
        audit = json.dumps(await s.api("gw-c", "audit"))
        assert "device_move" in audit and "may not hold" in audit, audit
        # History: fencing and ownership records; no two holders; writes by the holder.
        acked = s.acked()
        logs = owned_logs(s)
        rows = journal_rows(s.runner)
        events = await read_history(etcd3.members["gw-c"].host_port, PREFIX)
        checked = check_history(events, acked)
        assert sum(1 for e in events if e.key == "owners/bat") >= 5, checked
        writes = check_ownership(logs, {"gw-a": [w_kill]})
        print(f"battery writes checked against the holding periods: {writes}")
        assert writes.get("gw-a") and writes.get("gw-b"), writes
        # The battery's own account: every write from the holder of the record then.
        device_writes(events, rows, GWS)
        assert writers(rows, "bat") == {"gw-a", "gw-b"}, writers(rows, "bat")


async def test_cut_off_owner_lets_go_before_the_standby_takes_over(
        tmp_path: Path, etcd3: EtcdCluster) -> None:  # noqa: F811
    from tests.tcp_fault_proxy import TcpFaultProxy

    async with TcpFaultProxy(*etcd3.members["gw-a"].host_port) as proxy, \
            takeover_site(tmp_path, etcd3, via={"gw-a": proxy.port}) as (s, _keys):
        await start_with_leader(s, "gw-c")
        w0 = time.time()
        await until_async(lambda: polls(s, "gw-a", "bat", w0), "gw-a polling its battery",
                          timeout_s=60)
        w_cut = time.time()
        proxy.set_mode("black-hole")  # gw-a runs on but cannot reach the store
        await until_async(lambda: polls(s, "gw-b", "bat", w_cut), "gw-b polling bat",
                          timeout_s=60, interval_s=0.01)
        assert not await polls(s, "gw-a", "bat", 0.0)  # and gw-a still answers
        logs = owned_logs(s)
        let_go = [r["at"] for r in logs["gw-a"] if r["event"] == "detach" and r["at"] > w_cut]
        taken = [r["at"] for r in logs["gw-b"] if r["event"] == "attach" and r["at"] > w_cut]
        assert let_go and taken, logs
        print(f"\nowner cut off: it let go after {let_go[0] - w_cut:.2f} s, the standby "
              f"took over after {taken[0] - w_cut:.2f} s")
        proxy.set_mode("pass")  # back: a new lease; the battery comes back by handback
        await until_async(lambda: owner_is(s, "bat", "gw-a"), "the handback", timeout_s=60)
        w1 = time.time()
        await until_async(lambda: polls(s, "gw-a", "bat", w1), "gw-a polling bat",
                          timeout_s=30)
        acked = s.acked()  # before the history is read: every ack is older than it
        logs = owned_logs(s)
        rows = journal_rows(s.runner)
        events = await read_history(etcd3.members["gw-c"].host_port, PREFIX)
        check_history(events, acked)
        device_writes(events, rows, GWS)  # no write from the cut-off owner after the move
        assert writers(rows, "bat") == {"gw-a", "gw-b"}, writers(rows, "bat")
        writes = check_ownership(logs, {})
        print(f"battery writes checked against the holding periods: {writes}")
        assert writes.get("gw-a") and writes.get("gw-b"), writes


async def test_frozen_owner_does_no_io_once_its_lease_is_unrenewed(
        tmp_path: Path, etcd3: EtcdCluster) -> None:  # noqa: F811
    async with takeover_site(tmp_path, etcd3) as (s, _keys):
        await start_with_leader(s, "gw-c")
        w0 = time.time()
        await until_async(lambda: polls(s, "gw-a", "bat", w0), "gw-a polling its battery",
                          timeout_s=60)
        w_stop = time.time()
        s.procs["gw-a"].send_signal(signal.SIGSTOP)  # frozen: it cannot notice anything
        await until_async(lambda: polls(s, "gw-b", "bat", w_stop), "gw-b polling bat",
                          timeout_s=60)

        def wrote_b() -> bool:
            return any(r["event"] == "write" and r["at"] > w_stop
                       for r in owned_logs(s).get("gw-b", []))
        await until(wrote_b, "gw-b writing the battery", timeout_s=30)
        s.procs["gw-a"].send_signal(signal.SIGCONT)

        def let_go() -> list[dict[str, Any]]:
            return [r for r in owned_logs(s)["gw-a"]
                    if r["event"] == "detach" and r["noticed"] > w_stop]
        await until(let_go, "gw-a letting go after it woke", timeout_s=30)
        row = let_go()[0]
        print(f"\nfrozen owner: its last IO to the battery ended {row['at'] - w_stop:.2f} s "
              f"after the freeze; it let go {row['noticed'] - w_stop:.2f} s after it "
              f"(its IO gated meanwhile)")
        await until_async(lambda: owner_is(s, "bat", "gw-a"), "the handback", timeout_s=60)
        w1 = time.time()
        await until_async(lambda: polls(s, "gw-a", "bat", w1), "gw-a polling bat",
                          timeout_s=30)
        writes = check_ownership(owned_logs(s), {})
        assert writes.get("gw-a") and writes.get("gw-b"), writes
        # The battery's side: nothing from the frozen owner once gw-b held it, nothing
        # from it after it woke until the handback.
        acked = s.acked()
        rows = journal_rows(s.runner)
        events = await read_history(etcd3.members["gw-c"].host_port, PREFIX)
        check_history(events, acked)
        device_writes(events, rows, GWS)
        by_ip = {r.peer[0] for r in rows if r.device == "bat" and r.peer and r.at > w_stop}
        assert writers(rows, "bat") == {"gw-a", "gw-b"} and SOURCES["gw-b"] in by_ip, by_ip


async def autogrid_move(s: Site, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [*AUTOGRID, "cluster", "move", "-c", str(s.config), *args],
        cwd=s.tmp, env=env_for(s.tmp), capture_output=True, text=True, timeout=60)


async def owner_is(s: Site, dev: str, gw: str) -> bool:
    return await owner(s, dev) == gw


async def answers(s: Site, gw: str) -> bool:
    try:
        return bool(await s.api(gw, "cluster"))
    except (OSError, ApiRequestError, ApiUnavailable):
        return False
