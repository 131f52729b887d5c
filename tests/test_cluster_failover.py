"""Failover with real processes: three etcd members, three `autogrid run` gateways and the
simulated site on loopback. (a) SIGKILL the leader: another leads and writes setpoints
(the gap is printed); a killed device owner's devices go offline at the leader with an
alarm naming it. (b) SIGSTOP the leader past its lease, let a new leader write, SIGCONT:
the old one steps down and no write of its old term commits. The store's history is
checked in both (every committed setpoint carries the term current when it committed;
every acknowledged write is there, in order), and so are the devices' own write journals
against it (each write from the device's gateway, of a value the store held then)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.apiclient import ApiClient
from gateway.cluster.etcd_store import EtcdStore
from gateway.cluster.etcdproc import EtcdCluster
from gateway.cluster.store import Change
from sim_devices.runner import SimRunner
from tests.cluster_history import check_history, read_history
from tests.cluster_sim_site import device_writes, journal_rows, site, site_dict, write_site
from tests.etcd_cluster import etcd3  # noqa: F401  (fixture)
from tests.test_cli import AUTOGRID, env_for
from tests.waiting import until, until_async

PREFIX = "/autogrid/test"
GWS = ["gw-a", "gw-b", "gw-c"]


@dataclass
class Site:
    tmp: Path
    etcd: EtcdCluster
    runner: SimRunner
    config: Path
    observer: EtcdStore
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    writes: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (mono, value)
    keys: list[tuple[float, str]] = field(default_factory=list)  # (wall time, setpoint key)

    def start(self, gw: str) -> None:
        log = (self.tmp / f"{gw}.log").open("ab")
        self.procs[gw] = subprocess.Popen(
            [*AUTOGRID, "run", "-c", str(self.config), "--gateway", gw], cwd=self.tmp,
            env=env_for(self.tmp), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        log.close()

    def log(self, gw: str) -> str:
        return (self.tmp / f"{gw}.log").read_text(errors="replace")

    def acked(self) -> dict[str, list[dict[str, Any]]]:
        out = {}
        for gw in GWS:
            path = self.tmp / f"{gw}.cluster-acks.jsonl"
            if path.exists():
                out[gw] = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        return out

    async def leader(self) -> tuple[str | None, int | None]:
        e = await self.observer.get("leader")
        return (str(e.value["gateway"]), e.create_revision) if e is not None else (None, None)

    async def api(self, gw: str, cmd: str, **params: Any) -> Any:
        async with ApiClient(self.tmp / f"{gw}.sock") as api:
            return await api.request(cmd, **params)

    async def until_leader(self, want: str | None = None, not_term: int | None = None
                           ) -> tuple[str, int]:
        got: list[tuple[str | None, int | None]] = [(None, None)]

        async def check() -> bool:
            got[0] = await self.leader()
            g, t = got[0]
            return g is not None and (want is None or g == want) and t != not_term
        deadline = time.monotonic() + 60
        while not await check():
            assert time.monotonic() < deadline, f"no leader as wanted ({want}): {got[0]}"
            await asyncio.sleep(0.05)
        g, t = got[0]
        assert g is not None and t is not None
        return g, t


@asynccontextmanager
async def cluster_site(tmp: Path, etcd: EtcdCluster, via: dict[str, int] | None = None,
                       observe: str = "gw-a", switch_members: bool = True,
                       **site_kw: Any) -> AsyncIterator[Site]:
    """The site with its gateways' etcd URLs, except ``via``: gateway -> a proxy port in
    front of its member (the member itself listens where etcd3 put it).
    ``switch_members`` False: a gateway reaches its own member only. ``site_kw`` go to the
    site builder (standby gateways, handback)."""
    cfg = site(tmp, etcd, GWS, **site_kw)
    runner = SimRunner(cfg, port_overrides={"tcp": 0}, step_s=0.05)
    ports = await runner.start()
    raw = site_dict(tmp, etcd, GWS, port=ports["tcp"], **site_kw)
    for m in raw["cluster"]["members"]:
        if m["gateway"] in (via or {}):
            m["client_url"] = f"http://127.0.0.1:{(via or {})[m['gateway']]}"
    raw["cluster"]["switch_members"] = switch_members
    path = write_site(tmp / "site.yaml", raw)
    observer = EtcdStore("observer", etcd.members[observe].host_port, PREFIX,
                         campaign=False)
    await observer.start()
    s = Site(tmp, etcd, runner, path, observer)

    def on_write(ch: Change) -> None:
        if ch.value is not None:
            s.writes.append((time.monotonic(), ch.value))
            s.keys.append((time.time(), ch.key))
    cancel = observer.watch_prefix("setpoints/", on_write)
    try:
        yield s
    finally:
        cancel()
        for p in s.procs.values():
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
            p.wait(20)
        await observer.stop()
        await runner.stop()


async def start_with_leader(s: Site, first: str) -> int:
    s.start(first)  # alone when it campaigns: it leads
    _, term = await s.until_leader(first)
    for gw in GWS:
        if gw != first:
            s.start(gw)
    await until(lambda: any(v["term"] == term for _, v in s.writes), "setpoints written",
                timeout_s=60)
    await until(lambda: float(s.runner.values("ev_a")["p_kw"]) > 1.0,
                "gw-b's charger under the leader's setpoint", timeout_s=60)
    return term


async def test_killed_leader_is_replaced_and_a_dead_owner_alarmed(
        tmp_path: Path, etcd3: EtcdCluster) -> None:  # noqa: F811
    async with cluster_site(tmp_path, etcd3) as s:
        old_term = await start_with_leader(s, "gw-c")  # gw-c polls nothing: a pure leader
        t_kill = time.monotonic()
        s.procs["gw-c"].send_signal(signal.SIGKILL)
        new_leader, new_term = await s.until_leader(not_term=old_term)
        assert new_leader in ("gw-a", "gw-b") and new_term > old_term
        await until(lambda: any(v["term"] == new_term for _, v in s.writes),
                    "the new leader's setpoints", timeout_s=60)
        first = min(t for t, v in s.writes if v["term"] == new_term)
        print(f"\nleader SIGKILLed: new leader {new_leader} wrote setpoints after "
              f"{first - t_kill:.2f} s (lease TTL 2 s)")
        # Now the other device owner dies: the leader marks its devices offline, alarmed.
        victim = "gw-b" if new_leader == "gw-a" else "gw-a"
        s.procs[victim].send_signal(signal.SIGKILL)

        async def gone() -> bool:
            st = await s.api(new_leader, "cluster")
            return victim in st["gone"]
        await until_async(gone, "the dead gateway noticed", interval_s=0.1)
        alarms = await s.api(new_leader, "alarms")
        text = json.dumps(alarms)
        assert f"gateway {victim} gone since" in text, text
        status = await s.api(new_leader, "snapshot")
        victims = [d for d, g in (("ev_a", "gw-b"), ("meter", "gw-a")) if g == victim]
        assert all(status["devices"][d]["quality"] == "offline" for d in victims), \
            {d: status["devices"][d]["quality"] for d in victims}
        acked = s.acked()  # before the history is read: every ack is older than it
        rows = journal_rows(s.runner)
        events = await read_history(etcd3.members[new_leader].host_port, PREFIX)
        checked = check_history(events, acked)
        assert acked.get("gw-c") and checked.terms[0] == (old_term, "gw-c")
        assert (new_term, new_leader) in checked.terms
        by_dev = device_writes(events, rows, GWS)  # the devices' side of both terms
        assert by_dev.terms.get(old_term) and by_dev.terms.get(new_term), by_dev
        assert "gw-c" not in by_dev.writes  # it polls nothing, so it wrote nothing
        # `autogrid cluster status` with the first leader's etcd member down too.
        etcd3.kill("gw-c")
        await asyncio.to_thread(etcd3.wait_healthy, 30.0, [new_leader])
        st = await cluster_status(s, "--json")
        assert st.returncode == 0, st.stderr
        got = json.loads(st.stdout)
        members = {m["gateway"]: m for m in got["members"]}
        assert not members["gw-c"]["up"] and members[new_leader]["up"]
        # The same gateway may have been elected again since, on a new term: a keepalive
        # that found no raft leader while the members elected one (the killed member may
        # have led them) lets its lease lapse locally and it steps down, by design.
        assert got["leader"]["gateway"] == new_leader and got["leader"]["term"] >= new_term
        gws = {g["gateway"]: g for g in got["gateways"]}
        assert not gws[victim]["alive"] and not gws["gw-c"]["alive"]
        assert gws[new_leader]["alive"] and gws[new_leader]["lease_left_s"] >= 0
        assert set(gws[new_leader]["devices"].values()) == {"good"}
        assert got["setpoints"]["writer"] == new_leader
        text = (await cluster_status(s)).stdout
        shown = re.search(rf"leader: {new_leader} \(term (\d+)", text)
        assert shown is not None and int(shown[1]) >= got["leader"]["term"], text
        assert "member gw-c" in text and "DOWN" in text and "GONE" in text


async def test_lost_majority_stops_writes_and_the_site_recovers(
        tmp_path: Path, etcd3: EtcdCluster) -> None:  # noqa: F811
    async with cluster_site(tmp_path, etcd3) as s:
        term = await start_with_leader(s, "gw-a")
        # Two of three etcd members go: no quorum, no lease renewed anywhere.
        await asyncio.to_thread(etcd3.kill, "gw-b")
        await asyncio.to_thread(etcd3.kill, "gw-c")

        async def minority() -> bool:
            st = await s.api("gw-a", "cluster")
            alarms = json.dumps(await s.api("gw-a", "alarms", active_only=True))
            return not st["is_leader"] and "cannot renew its cluster lease" in alarms
        await until_async(minority, "gw-a stepping down with the alarm", interval_s=0.1)
        stopped = len(s.acked().get("gw-a", []))

        async def failing(n: int) -> bool:
            return int((await s.api("gw-a", "cluster"))["keepalive_failures"]) >= n
        await until_async(lambda: failing(3), "keepalives tried again and again", interval_s=0.1)
        assert len(s.acked().get("gw-a", [])) == stopped  # nothing acknowledged meanwhile
        # The members return: a leader writes again, the alarm clears.
        await asyncio.to_thread(etcd3.restart, "gw-b")
        await asyncio.to_thread(etcd3.restart, "gw-c")
        await until(lambda: sum(len(v) for v in s.acked().values()) > stopped,
                    "writes after the recovery", timeout_s=60)

        async def cleared() -> bool:
            active = await s.api("gw-a", "alarms", active_only=True)
            return "cannot renew" not in json.dumps(active)
        await until_async(cleared, "the alarm to clear", interval_s=0.1)
        acked = s.acked()
        rows = journal_rows(s.runner)
        events = await read_history(etcd3.members["gw-a"].host_port, PREFIX)
        checked = check_history(events, acked)
        assert checked.terms[0] == (term, "gw-a")
        device_writes(events, rows, GWS)


async def test_leader_cut_off_from_its_member_steps_down_and_rejoins(
        tmp_path: Path, etcd3: EtcdCluster) -> None:  # noqa: F811
    from tests.tcp_fault_proxy import TcpFaultProxy

    async with TcpFaultProxy(*etcd3.members["gw-a"].host_port) as proxy, \
            cluster_site(tmp_path, etcd3, via={"gw-a": proxy.port}, observe="gw-b",
                         switch_members=False) as s:
        term = await start_with_leader(s, "gw-a")
        proxy.set_mode("black-hole")  # a cut cable: gw-a's calls go unanswered
        new_leader, new_term = await s.until_leader(not_term=term)
        assert new_leader != "gw-a"
        await until(lambda: any(v["term"] == new_term for _, v in s.writes),
                    "the new leader's setpoints", timeout_s=60)

        async def cut_off() -> bool:
            st = await s.api("gw-a", "cluster")
            active = json.dumps(await s.api("gw-a", "alarms", active_only=True))
            return not st["is_leader"] and "cannot renew its cluster lease" in active
        await until_async(cut_off, "gw-a saying it is cut off", interval_s=0.1)
        gone = json.dumps(await s.api(new_leader, "alarms", active_only=True))
        assert "gateway gw-a gone since" in gone
        proxy.set_mode("pass")  # the cable is back: gw-a rejoins as a follower

        async def rejoined() -> bool:
            st = await s.api("gw-a", "cluster")
            active = json.dumps(await s.api("gw-a", "alarms", active_only=True))
            tele = await s.observer.get("telemetry/gw-a")
            return (not st["is_leader"] and st["leader"] == new_leader
                    and "cannot renew" not in active and tele is not None)
        await until_async(rejoined, "gw-a rejoining", timeout_s=60, interval_s=0.1)
        acked = s.acked()
        rows = journal_rows(s.runner)
        events = await read_history(etcd3.members["gw-b"].host_port, PREFIX)
        checked = check_history(events, acked)
        assert checked.terms[:2] == [(term, "gw-a"), (new_term, new_leader)]
        by_dev = device_writes(events, rows, GWS)
        assert by_dev.terms.get(term) and by_dev.terms.get(new_term), by_dev


async def cluster_status(s: Site, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [*AUTOGRID, "cluster", "status", "-c", str(s.config), *args],
        cwd=s.tmp, env=env_for(s.tmp), capture_output=True, text=True, timeout=60)


async def test_frozen_leader_is_fenced_and_steps_down(
        tmp_path: Path, etcd3: EtcdCluster) -> None:  # noqa: F811
    async with cluster_site(tmp_path, etcd3) as s:
        old_term = await start_with_leader(s, "gw-c")
        s.procs["gw-c"].send_signal(signal.SIGSTOP)
        new_leader, new_term = await s.until_leader(not_term=old_term)
        await until(lambda: any(v["term"] == new_term for _, v in s.writes),
                    "the new leader's setpoints", timeout_s=60)
        n_before = len(s.writes)
        s.procs["gw-c"].send_signal(signal.SIGCONT)

        async def stepped_down() -> bool:
            st = await s.api("gw-c", "cluster")
            return not st["is_leader"] and st["leader"] == new_leader
        await until_async(stepped_down, "the old leader stepping down", interval_s=0.1)
        assert "stepped down" in s.log("gw-c")
        # Later writes come from the new leader only, and the history is clean.
        await until(lambda: len(s.writes) > n_before + 5, "writes after the resume")
        assert all(v["writer"] == new_leader for _, v in s.writes[n_before:])
        acked = s.acked()  # before the history is read: every ack is older than it
        rows = journal_rows(s.runner)
        events = await read_history(etcd3.members["gw-a"].host_port, PREFIX)
        checked = check_history(events, acked)
        assert acked.get("gw-c") and acked.get(new_leader)
        assert [t for t, _ in checked.terms][:2] == [old_term, new_term]
        # The devices: no value of the frozen leader's term reached one once the new
        # term's had been current for a lease TTL, whoever applied it.
        by_dev = device_writes(events, rows, GWS)
        assert by_dev.terms.get(old_term) and by_dev.terms.get(new_term), by_dev


async def test_leader_whose_member_dies_goes_on_through_another(
        tmp_path: Path, etcd3: EtcdCluster) -> None:  # noqa: F811
    """The leader's own etcd member is killed while the other two still form a majority:
    the leader switches to another member (keeping its lease, or another gateway leads)
    and setpoints keep coming; the member returns: writes go on."""
    async with cluster_site(tmp_path, etcd3) as s:
        term = await start_with_leader(s, "gw-c")  # gw-c polls nothing: a pure leader
        n_kill = len(s.writes)
        t_kill = time.monotonic()
        await asyncio.to_thread(etcd3.kill, "gw-c")

        async def switched() -> bool:
            st = await s.api("gw-c", "cluster")
            return not st["own_endpoint"] and int(st["member_switches"]) >= 1
        await until_async(switched, "gw-c switching to another member", interval_s=0.1)
        await until(lambda: len(s.writes) > n_kill + 10, "setpoints after the kill",
                    timeout_s=60)
        times = [t_kill] + [t for t, _ in s.writes[n_kill:]]
        gap = max(b - a for a, b in itertools.pairwise(times))
        leader, now_term = await s.until_leader()
        print(f"\nleader's own member killed: leader now {leader} (term {now_term}, was "
              f"{term}); longest gap between setpoint writes {gap:.2f} s")
        st = await s.api("gw-c", "cluster")
        assert leader != "gw-c" or st["is_leader"]
        # The member returns: no disruption, writes go on.
        await asyncio.to_thread(etcd3.restart, "gw-c")
        await asyncio.to_thread(etcd3.wait_healthy, 30.0)
        n_back = len(s.writes)
        await until(lambda: len(s.writes) > n_back + 10, "setpoints after the restart",
                    timeout_s=60)
        assert await s.until_leader() == (leader, now_term)  # no new term
        acked = s.acked()  # before the history is read: every ack is older than it
        rows = journal_rows(s.runner)
        events = await read_history(etcd3.members["gw-a"].host_port, PREFIX)
        checked = check_history(events, acked)
        assert checked.terms[0] == (term, "gw-c")
        device_writes(events, rows, GWS)
