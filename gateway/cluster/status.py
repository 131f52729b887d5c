"""`autogrid cluster status -c site.yaml`: the cluster as etcd holds it, read from any
member that answers: members (up or down, etcd version, raft leader), the leader gateway
and its term, each gateway's lease (time left) and telemetry age, devices per gateway with
their quality (where the ownership records put them: a device taken over by a standby is
listed under the standby, marked so), and the last setpoint write. Nothing is written.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from gateway.config.models import SiteConfig

TIMEOUT_S = 2.0


def _client(cfg: SiteConfig, url: str, gateway: str, config_dir: Path) -> Any:
    """A client to the member at ``url``: plaintext, or TLS with ``gateway``'s certificate
    (the member is checked against the site CA by the host name in its URL)."""
    import aetcd

    from gateway.cluster.config import endpoint_of

    host, port = endpoint_of(url)
    cl = cfg.cluster
    if not url.startswith("https:") or cl is None or cl.tls is None:
        return aetcd.Client(host, port)
    from gateway.cluster.tlsclient import TlsClient

    ca, cert, key = (config_dir / p for p in cl.tls.for_gateway(gateway))
    return TlsClient(host, port, ca=ca, cert=cert, key=key)


async def gather(cfg: SiteConfig, timeout_s: float = TIMEOUT_S, gateway: str | None = None,
                 config_dir: Path | None = None, collect: bool = True) -> dict[str, Any]:
    """What `cluster status` shows, as a dict (also the ``--json`` output). ``collect``:
    free each client's grpc channel at once with a full GC (a short-lived command, the
    tests); the daemon (the console's Cluster screen) leaves it to the usual GC, since
    a full collection there would stall its event loop."""
    cl = cfg.cluster
    assert cl is not None and cl.backend == "etcd"
    gw = gateway or cfg.gateways[0].id
    now = time.time()
    members: list[dict[str, Any]] = []
    reader = None
    for m in cl.members:
        client = _client(cfg, m.client_url, gw, config_dir or Path.cwd())
        row: dict[str, Any] = {"gateway": m.gateway, "client_url": m.client_url}
        try:
            st = await asyncio.wait_for(client.status(), timeout_s)
            row.update({"up": True, "version": st.version,
                        "raft_leader": st.leader.name if st.leader else None,
                        "raft_term": st.raft_term})
            if reader is None:
                reader = client
        except Exception as exc:
            row.update({"up": False, "error": str(exc) or type(exc).__name__})
        if client is not reader:
            await _close(client, collect)
        members.append(row)
    out: dict[str, Any] = {"prefix": cl.prefix, "lease_ttl_s": cl.lease_ttl_s,
                           "members": members, "reachable": reader is not None}
    if reader is None:
        return out
    try:
        out.update(await _site(reader, cfg, now, timeout_s))
    except Exception as exc:  # e.g. a raft election under way: say so, do not guess
        out["error"] = f"reading the store failed: {exc or type(exc).__name__}"
    finally:
        await _close(reader, collect)
    return out


async def _close(client: Any, collect: bool = True) -> None:
    import contextlib
    import gc

    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), 1.0)
    if collect:
        gc.collect()  # frees the grpc channel (and its poller thread) now


async def _site(client: Any, cfg: SiteConfig, now: float, timeout_s: float) -> dict[str, Any]:
    assert cfg.cluster is not None
    prefix = cfg.cluster.prefix
    res = await asyncio.wait_for(client.get_prefix(prefix.encode()), timeout_s)
    keys: dict[str, Any] = {}
    for kv in res:
        try:
            value = json.loads(kv.value)
        except ValueError:
            value = None
        keys[kv.key.decode()[len(prefix) + 1:]] = (kv, value)
    leader: dict[str, Any] | None = None
    if "leader" in keys:
        kv, value = keys["leader"]
        since = (value or {}).get("since")
        leader = {"gateway": (value or {}).get("gateway"), "term": int(kv.create_revision),
                  "since": since, "for_s": now - since if isinstance(since, float) else None}
    # Devices per gateway: where the ownership records (takeover) put them, else configured.
    configured = {d.id: gw.id for gw in cfg.gateways for d in cfg.devices_of(gw.id)}
    holder = {k.removeprefix("owners/"): str(v.get("gateway")) for k, (_kv, v) in keys.items()
              if k.startswith("owners/") and isinstance(v, dict)}
    gateways: list[dict[str, Any]] = []
    for gw in cfg.gateways:
        mine = [d for d, g in configured.items() if holder.get(d, g) == gw.id]
        row: dict[str, Any] = {"gateway": gw.id, "devices": {d: None for d in mine},
                               "taken_over": {d: configured[d] for d in mine
                                              if configured[d] != gw.id}}
        entry = keys.get(f"telemetry/{gw.id}")
        if entry is None:
            row.update({"alive": False, "lease_left_s": None, "telemetry_age_s": None})
        else:
            kv, value = entry
            left = None
            try:
                info = await asyncio.wait_for(client.get_lease_info(kv.lease, keys=False),
                                              timeout_s)
                left = int(info.TTL)
            except Exception:
                left = None
            at = (value or {}).get("at")
            row.update({"alive": True, "lease_left_s": left,
                        "telemetry_age_s": now - at if isinstance(at, int | float) else None})
            for dev_id, d in ((value or {}).get("devices") or {}).items():
                if dev_id in row["devices"] and isinstance(d, dict):
                    row["devices"][dev_id] = d.get("q")
        gateways.append(row)
    writes = [(kv, v) for k, (kv, v) in keys.items() if k.startswith("setpoints/")]
    last = max(writes, key=lambda w: int(w[0].mod_revision), default=None)
    setpoints: dict[str, Any] = {"devices": len(writes)}
    if last is not None and isinstance(last[1], dict):
        at = last[1].get("at")
        setpoints.update({"revision": int(last[0].mod_revision), "term": last[1].get("term"),
                          "writer": last[1].get("writer"),
                          "age_s": now - at if isinstance(at, int | float) else None})
    return {"leader": leader, "gateways": gateways, "setpoints": setpoints,
            "revision": int(res.header.revision)}


def _s(v: object, fmt: str = "{:.1f} s") -> str:
    return fmt.format(v) if isinstance(v, int | float) else "-"


def render(st: dict[str, Any], out: TextIO) -> None:
    ok = sum(1 for m in st["members"] if m.get("up"))
    out.write(f"cluster {st['prefix']}: etcd, {ok} of {len(st['members'])} members up "
              f"(lease TTL {st['lease_ttl_s']:g} s)\n")
    for m in st["members"]:
        state = (f"up  etcd {m['version']}, raft leader {m['raft_leader'] or '-'}, "
                 f"raft term {m['raft_term']}" if m.get("up") else f"DOWN: {m['error']}")
        out.write(f"  member {m['gateway']:<12} {m['client_url']:<28} {state}\n")
    if not st["reachable"] or st.get("error"):
        out.write(f"{st.get('error') or 'no member answers'}: leader, gateways and "
                  f"setpoints unknown\n")
        return
    lead = st.get("leader")
    if lead:
        out.write(f"leader: {lead['gateway']} (term {lead['term']}, for "
                  f"{_s(lead['for_s'])})\n")
    else:
        out.write("leader: none (no gateway leads: the site controller runs nowhere)\n")
    for g in st["gateways"]:
        if g["alive"]:
            health = (f"alive, lease {_s(g['lease_left_s'], '{} s')} left, telemetry "
                      f"{_s(g['telemetry_age_s'])} old")
        else:
            health = "GONE (no lease: stopped, or silent past its lease)"
        over = g.get("taken_over") or {}
        devs = ", ".join(f"{d} {q or '?'}" + (f" (taken over from {over[d]})" if d in over
                                               else "")
                         for d, q in g["devices"].items()) or "no devices"
        out.write(f"  gateway {g['gateway']:<12} {health}; {devs}\n")
    sp = st["setpoints"]
    if sp.get("revision"):
        out.write(f"setpoints: {sp['devices']} devices, last written {_s(sp.get('age_s'))} "
                  f"ago by {sp.get('writer')} (term {sp.get('term')}, revision "
                  f"{sp['revision']})\n")
    else:
        out.write("setpoints: none written yet\n")
