"""``cluster_view`` on the API: what the console's Cluster screen shows.

The cluster as etcd holds it (members, leader and term, each gateway's lease and
telemetry, devices per gateway: :func:`gateway.cluster.status.gather`), this gateway's own
standing (leader or follower, lease age, keepalives failing: cut off), device takeovers
when an ``owners/`` key exists, and the site's mode as the leader stored it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.cluster.component import ClusterComponent

TIMEOUT_S = 1.0  # per member: a down member must not hold the screen up for long


def partition(me: dict[str, Any], gathered: dict[str, Any]) -> str:
    """This gateway's standing in words: ok, cut off, or no leader."""
    if me.get("keepalive_failures"):
        return (f"CUT OFF: gateway {me.get('gateway')} cannot renew its lease "
                f"({me['keepalive_failures']} keepalives failed); it cannot lead or publish")
    if not gathered.get("reachable"):
        return "CUT OFF: no etcd member answers"
    if not gathered.get("leader"):
        return "NO LEADER: the site controller runs nowhere"
    return "ok"


async def cluster_view(comp: ClusterComponent) -> dict[str, Any]:
    from gateway.cluster.status import gather

    d = comp.daemon
    me = comp.store.status()
    try:
        gathered = await gather(d.cfg, timeout_s=TIMEOUT_S, gateway=comp.gateway,
                                config_dir=d.config_dir, collect=False)
    except Exception as exc:  # e.g. certificates gone: say so, never guess
        gathered = {"members": [], "reachable": False, "error": str(exc)}
    owners: list[dict[str, Any]] = []
    control: dict[str, Any] | None = None
    try:
        entries = await asyncio.wait_for(comp.store.get_prefix("owners/"), TIMEOUT_S)
        owners = [{"device": e.key.removeprefix("owners/"), **e.value} for e in entries]
        site = await asyncio.wait_for(comp.store.get("site/control"), TIMEOUT_S)
        control = site.value if site else None
    except Exception as exc:
        gathered.setdefault("error", f"reading the store failed: {exc or type(exc).__name__}")
    return {**gathered, "me": me, "partition": partition(me, gathered), "owners": owners,
            "control": control}
