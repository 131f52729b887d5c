"""Every gateway and every etcd member stopped, then started again on the same data dirs:
the committed setpoints, the operator's mode and override and the audit rows are still in
the store, and the gateway that leads again holds the island and the override."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from gateway.apiclient import ApiClient
from gateway.cluster.etcd_store import EtcdStore
from gateway.cluster.etcdproc import EtcdCluster
from tests.cluster_sim_site import site
from tests.etcd_cluster import etcd3  # noqa: F401  (fixture)
from tests.test_cluster_daemon import comp, gateways
from tests.waiting import until

PREFIX = "/autogrid/test"


async def _stored(etcd: EtcdCluster) -> dict[str, Any]:
    """Every key of the site (but the leased ones and the leader key) with its value."""
    reader = EtcdStore("reader", etcd.members["gw-c"].host_port, PREFIX, campaign=False)
    await reader.start()
    try:
        entries = await reader.get_prefix("")
    finally:
        await reader.stop()
    return {e.key: e.value for e in entries
            if e.key.startswith(("setpoints/", "site/", "audit/", "commands/"))}


async def test_restart_of_every_gateway_and_member_keeps_the_site(
        tmp_path: Path, etcd3: EtcdCluster) -> None:  # noqa: F811
    cfg = site(tmp_path, etcd3, ["gw-a", "gw-b"])
    async with gateways(cfg, ["gw-a", "gw-b"]) as (_runner, ds):
        cs = {g: comp(d) for g, d in ds.items()}
        await until(lambda: cs["gw-b"].leader_id() == "gw-a", "gw-b knows the leader")
        await until(lambda: "bat" in ds["gw-a"].ports.controller.visible,  # type: ignore
                    "the leader sees the battery")
        async with ApiClient(ds["gw-b"].socket_path) as api:
            await api.request("override_set", device="bat", point="p_set_kw", value=2.0,
                              duration_s=3600)
            await api.request("mode_request", mode="island", reason="restart drill")

        async def settled() -> bool:
            e = await cs["gw-b"].store.get("site/control")
            rows = await cs["gw-b"].store.get_prefix("audit/")
            return bool(e and e.value["mode"] == "island" and e.value["overrides"]
                        and sum(r.value["user"].endswith("@gw-b") for r in rows) >= 2)
        deadline = time.monotonic() + 30
        while not await settled():
            assert time.monotonic() < deadline, "mode, override and audit never stored"
            await asyncio.sleep(0.05)
    before = await _stored(etcd3)
    assert any(k.startswith("setpoints/") for k in before), before
    for name in etcd3.members:
        etcd3.stop(name)
    assert not any(m.running() for m in etcd3.members.values())
    etcd3.restart_all()
    after = await _stored(etcd3)
    assert after == before  # committed setpoints, mode, overrides, audit: all there
    assert after["site/control"]["mode"] == "island" and after["site/control"]["held"]
    audit = sorted((v for k, v in after.items() if k.startswith("audit/")),
                   key=lambda r: r["seq"])
    assert [r["action"] for r in audit if r["user"].endswith("@gw-b")] == [
        "override_set", "mode_request"]
    # The gateways start again: the one that leads holds the island and the override.
    async with gateways(cfg, ["gw-a", "gw-b"]) as (_runner, ds):
        lead = comp(ds["gw-a"])
        await until(lambda: lead.leading(), "gw-a leads again")
        ctl: Any = ds["gw-a"].ports.controller
        assert ctl.modes.mode == "island" and ctl.modes.held is True, ctl.modes.as_dict()
        assert ctl.overrides[("bat", "p_set_kw")].value == 2.0
        assert lead.seeded is not None
        assert set(lead.seeded[1]) == {k.removeprefix("setpoints/") for k in before
                                       if k.startswith("setpoints/")}
