"""The site as one, on three real etcd members with two gateway daemons (in process): an
operator on the gateway that does not lead acts through the leader (the reply says what
the leader and the device did), the leader writes mode, overrides and audit rows into the
store, and the next leader takes the mode and overrides over (an operator's island stays
held)."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.apiclient import ApiClient, ApiRequestError
from gateway.cluster.etcdproc import EtcdCluster
from gateway.summary import fetch_picture, render
from tests.cluster_sim_site import site
from tests.etcd_cluster import etcd3  # noqa: F401  (fixture)
from tests.test_cluster_daemon import comp, gateways
from tests.test_cluster_failover import cluster_site, start_with_leader
from tests.waiting import until


async def _until_store(fetch: Any, what: str, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = await fetch()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_forwarded_commands_and_stored_mode_survive_failover(
        tmp_path: Path, etcd3: EtcdCluster) -> None:  # noqa: F811
    cfg = site(tmp_path, etcd3, ["gw-a", "gw-b"])
    async with gateways(cfg, ["gw-a", "gw-b"]) as (runner, ds):
        cs = {g: comp(d) for g, d in ds.items()}
        await until(lambda: cs["gw-a"].leading() and cs["gw-b"].leader_id() == "gw-a",
                    "gw-a leads and gw-b knows it")
        await until(lambda: {"bat", "ev_a"} <= ds["gw-a"].ports.controller.visible,  # type: ignore
                    "the leader sees the battery and gw-b's charger")
        term_a = cs["gw-a"].store.term
        async with ApiClient(ds["gw-b"].socket_path) as api:
            # An override on the gateway that does not lead: the leader holds it and the
            # reply is what the battery (on gw-a) took.
            o = await api.request("override_set", device="bat", point="p_set_kw",
                                  value=3.0, duration_s=600)
            assert o["carried_out_by"] == "gw-a" and o["term"] == term_a, o
            assert o["device"] == "bat" and o["written"] is True and o["at"] is not None, o
            assert o["read_back"] == pytest.approx(3.0, abs=0.05), o
            # An override of a device that gw-b polls, through the leader's controller: the
            # reply is gw-b's report of what its charger took, through the store.
            o2 = await api.request("override_set", device="ev_a", point="p_set_kw",
                                   value=4.0, duration_s=600)
            assert o2["carried_out_by"] == "gw-a" and o2["written"] is True, o2
            assert o2["read_back"] == pytest.approx(4.0, abs=0.05), o2
            await until(lambda: cs["gw-b"].applied["ev_a"][1]["p_set_kw"] == 4.0,
                        "gw-b applying the override")
            # An EV priority, from gw-b, for the car at gw-b's charger: the leader's session.
            await until(lambda: "ev_a" in ds["gw-a"].ports.controller.sessions.active,  # type: ignore
                        "the leader sees the car at ev_a")
            ev = await api.request("ev_set", charger="ev_a", priority="emergency",
                                   departure_in_h=2)
            assert ev["carried_out_by"] == "gw-a" and ev["priority"] == "emergency", ev
            # An operator's island, from gw-b: the leader opens the PCC breaker (gw-a's).
            m = await api.request("mode_request", mode="island", reason="storm drill")
            assert m["carried_out_by"] == "gw-a" and m["mode"] == "island", m
            assert m["held"] is True
            assert [b["device"] for b in m["breakers"]] == ["pcc"], m
            # A refusal at the leader comes back as the refusal, with the leader's name.
            with pytest.raises(ApiRequestError, match=r"cluster leader gw-a .*unknown device"):
                await api.request("override_set", device="nope", point="p_set_kw",
                                  value=1.0)
            local = await api.request("audit")
        assert runner.values("pcc")["closed"] in (False, 0)
        # gw-b audits what its operator asked and what came back (newest first)
        assert [r["action"] for r in local[:5]] == ["override_set", "mode_request",
                                                    "ev_set", "override_set",
                                                    "override_set"], local[:5]
        assert [r["ok"] for r in local[:5]] == [False, True, True, True, True]
        store = cs["gw-b"].store

        async def stored_island() -> Any:
            e = await store.get("site/control")
            return e.value if e and e.value["mode"] == "island" and e.value["overrides"] \
                else None
        ctl = await _until_store(stored_island, "the island and override in the store")
        assert ctl["held"] is True and ctl["writer"] == "gw-a" and ctl["term"] == term_a
        assert [(o["device"], o["point"], o["value"]) for o in ctl["overrides"]] == [
            ("bat", "p_set_kw", 3.0), ("ev_a", "p_set_kw", 4.0)]

        async def audit_rows() -> Any:
            rows = [e.value for e in await store.get_prefix("audit/")]
            mine = [r for r in rows if r["user"].endswith("@gw-b")]
            return rows if len(mine) >= 5 else None
        rows = sorted(await _until_store(audit_rows, "the forwarded rows in the store's "
                                                     "audit"), key=lambda r: r["seq"])
        fwd = [r for r in rows if r["user"].endswith("@gw-b")]
        assert [(r["action"], r["ok"]) for r in fwd] == [
            ("override_set", True), ("override_set", True), ("ev_set", True),
            ("mode_request", True), ("override_set", False)]
        assert all(r["writer"] == "gw-a" and r["term"] == term_a for r in fwd)
        assert [r["seq"] for r in rows] == list(range(rows[0]["seq"],
                                                      rows[0]["seq"] + len(rows)))
        # Every gateway shows the same site: gw-b's view of the store.
        async with ApiClient(ds["gw-b"].socket_path) as api:
            view = await api.request("cluster_site")
            follower = await api.request("control_status")  # the console's mode
            page = render(await fetch_picture(api))  # what `autogrid status` prints
        assert view["control"]["mode"] == "island" and view["leader"] == "gw-a"
        assert "site:mode" in [a["key"] for a in view["alarms"]["gw-a"]], view["alarms"]
        assert "Site mode island (held by an operator)" in page, page
        assert follower["mode"]["mode"] == "island" and follower["mode"]["held"] is True
        assert follower["mode"]["stored_by"] == "gw-a", follower["mode"]
        assert [o["device"] for o in follower["overrides"]] == ["bat", "ev_a"]
        assert re.search(r"override bat\.p_set_kw = 3\.0 by \S+@gw-b, 10 min left", page), page
        assert "gw-a site: site in island mode" in page, page
        # gw-a's alarm acknowledged from gw-b: done on gw-a, published acknowledged.
        async with ApiClient(ds["gw-b"].socket_path) as api:
            listed = await api.request("alarms")  # every gateway's, keyed <gateway>/<key>
            assert "gw-a/site:mode" in [a["key"] for a in listed], listed
            acked = await api.request("alarm_ack", key="gw-a/site:mode")
            with pytest.raises(ApiRequestError, match=r"gw-a.*unknown alarm 'nope'"):
                await api.request("alarm_ack", key="nope", gateway="gw-a")
        assert acked["carried_out_by"] == "gw-a" and acked["acked_by"].endswith("@gw-b")
        assert ds["gw-a"].ports.alarms is not None
        assert ds["gw-a"].ports.alarms.alarms["site:mode"].acked_by == acked["acked_by"]

        async def published_ack() -> Any:
            e = await store.get("alarms/gw-a")
            return e and any(a["key"] == "site:mode" and a["acked_by"]
                             for a in e.value["alarms"])
        await _until_store(published_ack, "gw-a's alarm published as acknowledged")

        # The leader stops: gw-b leads a newer term, still in the operator's island (held:
        # no automatic reconnection) and holding the override.
        await ds["gw-a"].shutdown()
        await until(lambda: cs["gw-b"].leading(), "gw-b leads")
        ctl_b: Any = ds["gw-b"].ports.controller
        assert ctl_b is not None
        assert ctl_b.modes.mode == "island" and ctl_b.modes.held is True, \
            ctl_b.modes.as_dict()
        assert ("bat", "p_set_kw") in ctl_b.overrides
        sess = ctl_b.sessions.active["ev_a"]  # the operator's priority and departure held
        assert sess.priority == "emergency", sess
        assert abs((sess.departure_s - ctl_b.clock()) / 3600 - 2) < 0.1, sess
        term_b = cs["gw-b"].store.term
        assert term_b is not None and term_a is not None and term_b > term_a

        async def rewritten() -> Any:
            e = await store.get("site/control")
            return e.value if e and e.value["writer"] == "gw-b" else None
        again = await _until_store(rewritten, "the new leader's site/control")
        assert again["mode"] == "island" and again["held"] is True
        assert again["term"] == term_b
        # The new leader appends to the same audit, after the old leader's rows.
        async with ApiClient(ds["gw-b"].socket_path) as api:
            await api.request("override_clear", device="bat")

        async def cleared_row() -> Any:
            got = [e.value for e in await store.get_prefix("audit/")
                   if e.value["action"] == "override_clear"]
            return got or None
        row = (await _until_store(cleared_row, "gw-b's audit row in the store"))[0]
        assert row["writer"] == "gw-b" and row["term"] == term_b
        assert row["seq"] > rows[-1]["seq"]


async def test_no_leader_means_a_clear_refusal(tmp_path: Path,
                                               etcd3: EtcdCluster) -> None:  # noqa: F811
    """Gateways as processes (failed grpc calls in process keep grpc's poller thread)."""
    async with cluster_site(tmp_path, etcd3, observe="gw-b") as s:
        await start_with_leader(s, "gw-a")
        # Two of three members gone: no quorum, so no one can lead; gw-a steps down.
        etcd3.kill("gw-a")
        etcd3.kill("gw-c")

        async def stepped_down() -> bool:
            st = await s.api("gw-a", "cluster")
            return not st["is_leader"]
        deadline = time.monotonic() + 30
        while not await stepped_down():
            assert time.monotonic() < deadline, "gw-a never stepped down"
            await asyncio.sleep(0.1)
        for gw in ("gw-a", "gw-b"):
            with pytest.raises(ApiRequestError, match=r"not carried out|may or may not"):
                await s.api(gw, "mode_request", mode="island")
            audit = await s.api(gw, "audit")
            assert audit[0]["action"] == "mode_request" and not audit[0]["ok"], audit[0]
        with pytest.raises(ApiRequestError, match="no cluster leader is elected"):
            await s.api("gw-a", "shed", load="heater")
        etcd3.restart_all()


async def test_an_emergency_stop_stays_across_failover(tmp_path: Path,
                                                       etcd3: EtcdCluster) -> None:  # noqa: F811
    cfg = site(tmp_path, etcd3, ["gw-a", "gw-b"])
    async with gateways(cfg, ["gw-a", "gw-b"]) as (runner, ds):
        cs = {g: comp(d) for g, d in ds.items()}
        await until(lambda: cs["gw-b"].leader_id() == "gw-a", "gw-b knows the leader")
        await until(lambda: float(runner.values("ev_a")["p_kw"]) > 1.0, "ev_a charging")
        async with ApiClient(ds["gw-b"].socket_path) as api:
            stop = await api.request("emergency_stop", reason="smoke in the plant room")
        assert stop["carried_out_by"] == "gw-a" and stop["mode"] == "estop", stop
        await until(lambda: cs["gw-a"].sitewide.written is not None
                    and cs["gw-a"].sitewide.written["mode"] == "estop", "estop stored")
        await ds["gw-a"].shutdown()
        await until(lambda: cs["gw-b"].leading(), "gw-b leads")
        ctl: Any = ds["gw-b"].ports.controller
        assert ctl.modes.mode == "estop", ctl.modes.as_dict()
        # the new leader's own setpoint keeps gw-b's charger at zero
        term = cs["gw-b"].store.term
        await until(lambda: cs["gw-b"].applied_term.get("ev_a") == term,
                    "the new leader's setpoint for ev_a applied")
        assert cs["gw-b"].applied["ev_a"][1].get("p_set_kw") == 0.0
