"""Operators' breaker commands on a breaker that a follower polls, on three real etcd
members with three gateway daemons (in process) and the simulated site: gw-a leads, gw-b
polls the feeder breaker, gw-c polls nothing. A trip or close given on any of them is
written fenced by the leader, run once by gw-b's applier, and answered with the breaker's
read-back (one row in the site's audit each); a command the breaker cannot carry out is
answered as failed and never acts later; a command left in the store is not replayed by a
new leader or a restarted gw-b, nor run when it reaches gw-b late."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient

from gateway.apiclient import ApiClient, ApiRequestError
from gateway.cluster.commands import COMMAND_MAX_AGE_S
from gateway.cluster.etcd_store import EtcdStore
from gateway.cluster.etcdproc import EtcdCluster
from gateway.config.models import SiteConfig
from gateway.daemon import Daemon
from gateway.demo import with_ports
from gateway.model import Quality
from tests.cluster_sim_site import site_dict, write_site
from tests.etcd_cluster import etcd3  # noqa: F401  (fixture)
from tests.test_cli import AUTOGRID, env_for
from tests.test_cluster_daemon import comp, gateways
from tests.waiting import until, until_async

GWS = ["gw-a", "gw-b", "gw-c"]
PREFIX = "/autogrid/test"
FEEDER_UNIT = 9


def feeder_site(tmp: Path, etcd: EtcdCluster) -> SiteConfig:
    """The cluster test site with a feeder breaker on gw-b (it supplies ev_b)."""
    raw = site_dict(tmp, etcd, GWS)
    raw["devices"].append({"id": "feeder", "nature": "breaker",
                           "template": "generic_breaker", "connection": "tcp",
                           "unit_id": FEEDER_UNIT, "poll_interval_s": 0.1, "gateway": "gw-b"})
    raw["simulation"]["devices"]["feeder"] = {"supplies": ["ev_b"]}
    return SiteConfig.model_validate(raw)


def closed(runner: Any) -> bool:
    return bool(runner.values("feeder")["closed"])


async def site_audit(store: EtcdStore, action: str = "override_set") -> list[dict[str, Any]]:
    rows = sorted((e.value for e in await store.get_prefix("audit/")),
                  key=lambda r: int(r["seq"]))
    return [r for r in rows if r["action"] == action
            and (r["detail"].get("device") in ("feeder", "bat", "heater"))]


async def ask(d: Daemon, cmd: str, **params: Any) -> Any:
    async with ApiClient(d.socket_path) as api:
        return await api.request(cmd, **params)


async def ready(ds: dict[str, Daemon]) -> None:
    cs = {g: comp(d) for g, d in ds.items()}
    await until(lambda: cs["gw-a"].leading()
                and all(c.leader_id() == "gw-a" for c in cs.values()),
                "gw-a leads and everyone knows it")
    await until(lambda: all(
        d.state.devices["feeder"].device_quality(time.time()) is Quality.GOOD
        for d in ds.values()), "every gateway sees the feeder good")


async def test_breaker_on_a_follower_from_any_gateway(
        tmp_path: Path, etcd3: EtcdCluster) -> None:  # noqa: F811
    cfg = feeder_site(tmp_path, etcd3)
    async with gateways(cfg, GWS) as (runner, ds):
        await ready(ds)
        assert closed(runner)
        term = comp(ds["gw-a"]).store.term
        took: dict[str, float] = {}
        # (c) on gw-c, which polls nothing: forwarded to the leader, run by gw-b
        t0 = time.perf_counter()
        r = await ask(ds["gw-c"], "override_set", device="feeder", point="trip", value=True)
        took["gw-c"] = time.perf_counter() - t0
        assert r["carried_out_by"] == "gw-a" and r["term"] == term, r
        assert r["polled_by"] == "gw-b" and r["written"] is True and r["read_back"] is True
        assert not closed(runner)
        # (b) on gw-b itself, which polls it (a follower: through the leader too)
        t0 = time.perf_counter()
        r = await ask(ds["gw-b"], "override_set", device="feeder", point="close", value=True)
        took["gw-b"] = time.perf_counter() - t0
        assert r["carried_out_by"] == "gw-a" and r["polled_by"] == "gw-b", r
        assert r["written"] is True and r["read_back"] is True
        assert closed(runner)
        # (a) on the leader
        t0 = time.perf_counter()
        r = await ask(ds["gw-a"], "override_set", device="feeder", point="trip", value=True)
        took["gw-a"] = time.perf_counter() - t0
        assert "carried_out_by" not in r and r["polled_by"] == "gw-b", r
        assert r["written"] is True and r["read_back"] is True
        assert not closed(runner)
        print("\nbreaker on gw-b, reply with its read-back, asked on: " + ", ".join(
            f"{g} {t * 1000:.0f} ms" for g, t in sorted(took.items())))
        store = comp(ds["gw-c"]).store
        assert comp(ds["gw-b"]).commands.ran == 3 and comp(ds["gw-a"]).commands.sent == 3

        async def three_rows() -> Any:
            rows = await site_audit(store)
            return rows if len(rows) >= 3 else None
        await until_async(three_rows, "the leader's audit rows in the store")
        rows = await site_audit(store)
        assert [(r["detail"]["point"], r["ok"], r["user"].rsplit("@", 1)[-1])
                for r in rows] == [("trip", True, "gw-c"), ("close", True, "gw-b"),
                                   ("trip", True, rows[2]["user"])], rows
        assert "@" not in rows[2]["user"] and all(r["writer"] == "gw-a" for r in rows)

        # The breaker cannot carry it out (it answers every request with an exception):
        # refused or failed, said so and audited so; it does not trip later either.
        await ask(ds["gw-a"], "override_set", device="feeder", point="close", value=True)
        assert closed(runner)
        await runner.set_fault("feeder", "exception")
        with pytest.raises(ApiRequestError) as err:
            await ask(ds["gw-c"], "override_set", device="feeder", point="trip", value=True)
        msg = str(err.value)
        assert "cluster leader gw-a" in msg and "feeder" in msg, msg
        assert "offline" in msg or "refused/failed" in msg or "did not answer" in msg, msg
        await runner.clear_fault("feeder")
        t_clear = time.time()
        b = ds["gw-b"]
        await until(lambda: (b.state.devices["feeder"].health.last_ok or 0.0) > t_clear,
                    "gw-b polling the feeder again")
        await until(lambda: b.state.devices["feeder"].device_quality(time.time())
                    is Quality.GOOD, "feeder good at gw-b")
        assert b.ports.applier is not None
        assert "trip" not in b.ports.applier.pending("feeder"), "the trip is still retried"
        assert closed(runner), "the failed trip acted later"

        async def refused_row() -> Any:
            rows = await site_audit(store)
            return rows if len(rows) >= 5 else None
        await until_async(refused_row, "the refusal in the store's audit")
        last = (await site_audit(store))[-1]
        assert last["ok"] is False and last["detail"]["point"] == "trip", last
        assert last["user"].endswith("@gw-c") and "feeder" in last["reason"], last


async def test_a_stale_command_is_not_replayed(
        tmp_path: Path, etcd3: EtcdCluster) -> None:  # noqa: F811
    cfg = feeder_site(tmp_path, etcd3)
    async with gateways(cfg, GWS) as (runner, ds):
        await ready(ds)
        r = await ask(ds["gw-c"], "override_set", device="feeder", point="trip", value=True)
        assert r["written"] is True and not closed(runner), r
        store = comp(ds["gw-c"]).store
        first = await store.get("commands/feeder")
        assert first is not None and first.value["writer"] == "gw-a"
        old_term = first.value["term"]
        # Someone closes the breaker by hand at the panel (a write on its own bus).
        client = AsyncModbusTcpClient("127.0.0.1", port=runner.ports["tcp"])
        await client.connect()
        try:
            await client.write_coil(1, True, device_id=FEEDER_UNIT)
        finally:
            client.close()
        await until(lambda: closed(runner), "the feeder closed by hand")
        # The leader stops: a new one leads; it does not write the old command again.
        await ds["gw-a"].shutdown()
        await until(lambda: comp(ds["gw-c"]).leader_id() in ("gw-b", "gw-c")
                    and comp(ds["gw-c"]).store.term != old_term, "a new leader")
        # gw-b restarts: the store's last command (a trip, some seconds old) is not run.
        await ds["gw-b"].shutdown()
        assert (await store.get("commands/feeder")).value["id"] == first.value["id"]  # type: ignore[union-attr]
        run_cfg = with_ports(cfg, runner.ports)
        ds["gw-b"] = Daemon(run_cfg, "gw-b")
        await ds["gw-b"].start()
        cb = comp(ds["gw-b"])
        await until(lambda: any(n["id"] == first.value["id"] for n in cb.commands.not_run),
                    "the restarted gw-b reading the old command")
        assert "written before gateway gw-b started" in cb.commands.not_run[-1]["why"]
        assert cb.commands.ran == 0 and closed(runner)
        # A command that reaches gw-b late (here: written with a time long past) is not
        # run, and gw-b answers so.
        cid = uuid.uuid4().hex
        at = cb.commands.started_at + 0.001  # (after gw-b started, a while ago by now)
        await until(lambda: time.time() - at > 1.5 * COMMAND_MAX_AGE_S, "time passing")
        await store.put("commands/feeder", {
            "id": cid, "point": "trip", "value": True, "user": "test", "to": "gw-b",
            "writer": "gw-c", "term": comp(ds["gw-c"]).store.term, "at": at})

        async def answered() -> Any:
            e = await store.get("command_reports/feeder")
            return e.value if e is not None and e.value["id"] == cid else None
        await until_async(answered, "gw-b's answer to the late command")
        ans = await answered()
        assert ans["ok"] is False and "after it was given" in ans["error"], ans
        assert cb.commands.ran == 0 and closed(runner)
        # A fresh one from the new leader runs (the refusals above were not for nothing).
        await until(lambda: cb.leading() or comp(ds["gw-c"]).leading(), "a leader seeded")
        on = "gw-b" if cb.leading() else "gw-c"
        r = await ask(ds[on], "override_set", device="feeder", point="trip", value=True)
        assert r["written"] is True and not closed(runner), r


async def test_device_move_from_a_follower(tmp_path: Path,
                                           etcd3: EtcdCluster) -> None:  # noqa: F811
    raw = site_dict(tmp_path, etcd3, ["gw-a", "gw-b"], standby={"bat": ["gw-b"]},
                    handback_after_s=3600)
    cfg = SiteConfig.model_validate(raw)
    async with gateways(cfg, ["gw-a", "gw-b"]) as (runner, ds):
        a, b = comp(ds["gw-a"]), comp(ds["gw-b"])
        await until(lambda: a.takeover.held == {"bat"} and b.leader_id() == "gw-a"
                    and "gw-b" in a.takeover.live, "gw-a holding its battery, gw-b live",
                    timeout_s=30)
        got = await ask(ds["gw-b"], "device_move", device="bat", gateway="gw-b")
        assert got["carried_out_by"] == "gw-a" and got["gateway"] == "gw-b", got
        assert got["written"] is True
        await until(lambda: b.takeover.held == {"bat"}, "gw-b holding the battery",
                    timeout_s=30)
        with pytest.raises(ApiRequestError, match=r"cluster leader gw-a .*'heater' has no "
                                                  r"standby_gateways"):
            await ask(ds["gw-b"], "device_move", device="heater", gateway="gw-b")
        with pytest.raises(ApiRequestError, match=r"cluster leader gw-a .*gw-c may not hold"):
            await ask(ds["gw-b"], "device_move", device="bat", gateway="gw-c")

        async def rows() -> Any:
            got = await site_audit(b.store, "device_move")
            return got if len(got) >= 3 else None
        await until_async(rows, "the moves in the store's audit")
        site = await site_audit(b.store, "device_move")
        assert [(r["detail"]["device"], r["ok"], r["writer"]) for r in site] == [
            ("bat", True, "gw-a"), ("heater", False, "gw-a"), ("bat", False, "gw-a")], site
        assert all(r["user"].endswith("@gw-b") for r in site)
        assert "may not hold" in site[2]["reason"]
        local = [r for r in await ask(ds["gw-b"], "audit") if r["action"] == "device_move"]
        assert [r["ok"] for r in local] == [False, False, True], local  # newest first
        # `autogrid cluster move --on` a follower: the leader moves it back.
        raw["connections"][0]["port"] = runner.ports["tcp"]
        path = write_site(tmp_path / "site.yaml", raw)
        done = await asyncio.to_thread(
            subprocess.run, [*AUTOGRID, "cluster", "move", "-c", str(path), "bat", "gw-a",
                             "--on", "gw-b"], cwd=tmp_path, env=env_for(tmp_path),
            capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "bat moves to gw-a (ownership record written by gw-a, asked on gw-b)" in \
            done.stdout, done.stdout
        await until(lambda: a.takeover.held == {"bat"} and not b.takeover.held,
                    "gw-a holding its battery again", timeout_s=30)
