"""`autogrid demo --gateways N`: the demo site split over N gateways that run as one
cluster: N etcd members (child processes, temp data dirs, free loopback ports), the
simulated devices, and N gateway daemons in this process, each polling its share of the
devices; the live summary names the leader and its term. Kill nothing here: the tests and
bench/cluster.py do that.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from gateway.cluster.config import ClusterConfig, Member
from gateway.config.models import Gateway, SiteConfig
from gateway.daemon import Daemon

# The grid connection and the site's own battery stay with the first gateway; the rest
# are dealt out in turn.
FIRST = ("meter", "breaker", "bess")


def split(cfg: SiteConfig, ids: list[str], tmp: Path, etcd: Any) -> SiteConfig:
    """``cfg`` with its devices dealt to ``ids`` and a plaintext loopback cluster."""
    devices = []
    turn = 0
    for d in cfg.devices:
        if str(d.nature) in FIRST:
            gw = ids[0]
        else:
            turn += 1
            gw = ids[turn % len(ids)]
        devices.append(d.model_copy(update={"gateway": gw, "standby_gateways": []}))
    gateways = [Gateway(id=g, api_socket=tmp / f"{g}.sock") for g in ids]
    cluster = ClusterConfig(backend="etcd", allow_plaintext=True, prefix="/autogrid/demo",
                            members=[Member(gateway=g, client_url=etcd.members[g].client_url,
                                            peer_url=etcd.members[g].peer_url)
                                     for g in ids])
    return cfg.model_copy(update={"devices": devices, "gateways": gateways,
                                  "cluster": cluster})


def for_gateway(cfg: SiteConfig, gw: str, tmp: Path) -> SiteConfig:
    """Each gateway keeps its own history and alarms, as on its own box."""
    hist = cfg.historian.model_copy(update={"path": str(tmp / f"{gw}.sqlite")})
    out = cfg.model_copy(update={"historian": hist})
    if cfg.control is not None:
        ctl = cfg.control.model_copy(update={"state_path": str(tmp / f"{gw}.control.sqlite")})
        out = out.model_copy(update={"control": ctl})
    if cfg.analytics is not None:  # training three times over on one machine: off here
        out = out.model_copy(update={"analytics": cfg.analytics.model_copy(
            update={"enabled": False})})
    return out


def cluster_line(daemons: dict[str, Daemon]) -> str:
    leader = term = None
    parts = []
    for gw, d in daemons.items():
        comp = d.ports.cluster
        store = getattr(comp, "store", None)
        if store is not None and comp is not None and comp.leading():
            leader, term = gw, store.term
        own = getattr(comp, "own", [])
        good = sum(1 for dev in own if dev in d.state.devices
                   and str(d.state.devices[dev].device_quality(_now())) == "good")
        parts.append(f"{gw} {good}/{len(own)} ok")
    lead = f"leader {leader} (term {term})" if leader else "no leader yet"
    return f"{lead}; " + ", ".join(parts)


def _now() -> float:
    import time
    return time.time()


async def run_cluster_demo(cfg: SiteConfig, n: int, duration_s: float | None = None,
                           interval_s: float | None = None, speed: float | None = None,
                           out: TextIO = sys.stdout) -> None:
    from gateway.cluster.etcdproc import EtcdCluster
    from gateway.demo import _on_sim_time, picture, start_site
    from gateway.summary import one_line

    ids = [f"gw-{chr(ord('a') + i)}" for i in range(n)]
    with tempfile.TemporaryDirectory(prefix="autogrid-cluster-demo-") as d:
        tmp = Path(d)
        etcd = EtcdCluster.loopback(ids, tmp / "etcd")
        await asyncio.to_thread(etcd.start)
        daemons: dict[str, Daemon] = {}
        runner: Any = None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            site = split(cfg, ids, tmp, etcd)
            runner, live = await start_site(site, speed)
            for gw in ids:
                daemons[gw] = Daemon(for_gateway(live, gw, tmp), gw)
                await daemons[gw].start()
                _on_sim_time(daemons[gw], runner)
            print(f"AutoGrid cluster demo: {len(site.devices)} simulated devices on "
                  f"127.0.0.1 over {n} gateways ({', '.join(ids)}) and {n} etcd members; "
                  f"APIs at {tmp}/gw-*.sock. Ctrl-C stops.", file=out, flush=True)
            step = interval_s or (1.0 if out.isatty() else 5.0)
            elapsed = 0.0
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), step)
                elapsed += step
                lead = next((dm for dm in daemons.values()
                             if dm.ports.cluster is not None and dm.ports.cluster.leading()),
                            daemons[ids[0]])
                out.write(f"{cluster_line(daemons)} | {one_line(picture(lead))}\n")
                out.flush()
                if duration_s is not None and elapsed >= duration_s:
                    break
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
            # followers first, the leader last: no hand-over churn on the way out
            order = sorted(daemons.values(), key=lambda dm: dm.ports.cluster is not None
                           and dm.ports.cluster.leading())
            for dm in order:
                await dm.shutdown()
            if runner is not None:
                await runner.stop()
            await asyncio.to_thread(etcd.close)
            print("AutoGrid cluster demo stopped: gateways, devices and etcd members ended.",
                  file=out, flush=True)
