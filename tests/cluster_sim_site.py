"""A two- or three-gateway simulated site for the cluster tests: one site config, each
gateway polling its own devices, all over Modbus TCP on loopback, etcd members on loopback.

Each gateway connects to the devices from its own loopback address (``SOURCES``, the
connection's per-gateway ``source_address``) and the simulated devices journal every
write with its peer, so ``device_writes`` can check from the devices' side who wrote what
and when (tests.cluster_history.check_device_writes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gateway.cluster.etcdproc import EtcdCluster
from gateway.config.models import SiteConfig
from sim_devices.journal import WriteRecord
from sim_devices.runner import SimRunner
from tests.cluster_history import DeviceWritesChecked, Event, check_device_writes

POLL_S = 0.1
# gateway -> the loopback address it connects to the devices from (Linux routes all of
# 127.0.0.0/8 to lo, so these need no setup)
SOURCES = {"gw-a": "127.0.0.2", "gw-b": "127.0.0.3", "gw-c": "127.0.0.4"}
JOURNAL_PER_DEVICE = 5000  # a test's whole run (a few writes per cycle at most); more fails loudly
# device -> owning gateway; gw-c (when present) polls nothing: a spare that can lead
OWNERS = {"meter": "gw-a", "bat": "gw-a", "pcc": "gw-a", "crit": "gw-a", "heater": "gw-a",
          "ev_a": "gw-b", "ev_b": "gw-b"}


def site_dict(tmp: Path, etcd: EtcdCluster, gateways: list[str], *, cycle_s: float = 0.2,
              lease_ttl_s: float = 2.0, port: int = 1,
              standby: dict[str, list[str]] | None = None,
              handback_after_s: float | None = None) -> dict[str, Any]:
    def dev(i: int, id_: str, nature: str, template: str, **kw: Any) -> dict[str, Any]:
        extra = {"standby_gateways": standby[id_]} if standby and id_ in standby else {}
        return {"id": id_, "nature": nature, "template": template, "connection": "tcp",
                "unit_id": i, "poll_interval_s": POLL_S, "gateway": OWNERS[id_], **extra,
                **kw}
    handback = {} if handback_after_s is None else {"handback_after_s": handback_after_s}
    return {
        "site": {"name": "cluster", "timezone": "UTC", "grid": {"import_limit_kw": 30.0}},
        "gateways": [{"id": g, "api_socket": str(tmp / f"{g}.sock")} for g in gateways],
        "connections": [{"id": "tcp", "type": "modbus_tcp", "host": "127.0.0.1",
                         "port": port, "timeout_s": 2.0, "reconnect_delay_s": 0.1,
                         "source_address": {g: SOURCES[g] for g in gateways}}],
        "devices": [
            dev(1, "meter", "meter", "meter_3ph", role="grid"),
            dev(2, "bat", "bess", "generic_bess", ratings={"capacity_kwh": 50, "p_max_kw": 25}),
            dev(3, "ev_a", "evse", "generic_evse", ratings={"p_max_kw": 11}),
            dev(4, "ev_b", "evse", "generic_evse", ratings={"p_max_kw": 11}),
            dev(6, "crit", "load", "generic_load", ratings={"p_max_kw": 5},
                control={"priority": "critical"}),
            dev(7, "heater", "load", "generic_load", ratings={"p_max_kw": 10},
                control={"priority": "deferrable"}),
            dev(8, "pcc", "breaker", "generic_breaker"),
        ],
        "historian": {"enabled": False},
        "control": {"cycle_s": cycle_s, "emergency": {"pcc_breaker": "pcc"}},
        "cluster": {"backend": "etcd", "allow_plaintext": True, "lease_ttl_s": lease_ttl_s,
                    "prefix": "/autogrid/test", **handback,
                    "members": [{"gateway": g, "client_url": etcd.members[g].client_url,
                                 "peer_url": etcd.members[g].peer_url} for g in gateways]},
        "simulation": {"seed": 3, "clock": {"start": "2025-06-21T09:00:00+00:00"},
                       "write_journal": {"per_device": JOURNAL_PER_DEVICE},
                       "devices": {
                           "bat": {"initial_soc_pct": 60.0},
                           "crit": {"profile": "constant", "p_kw": 5, "noise_pct": 0},
                           "heater": {"profile": "constant", "p_kw": 10, "noise_pct": 0},
                           "ev_a": {"default_p_kw": 0, "sessions": [{
                               "arrival": "2025-06-21T08:59:00+00:00",
                               "departure": "2025-06-21T13:00:00+00:00",
                               "energy_kwh": 40}]},
                           "ev_b": {"default_p_kw": 0}}},
    }


def site(tmp: Path, etcd: EtcdCluster, gateways: list[str], **kw: Any) -> SiteConfig:
    return SiteConfig.model_validate(site_dict(tmp, etcd, gateways, **kw))


def write_site(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def journal_rows(runner: SimRunner) -> list[WriteRecord]:
    """The devices' write journal so far. Take it before reading the store's history:
    then every value written was committed before the history's end."""
    assert runner.journal is not None, "the site's simulation.write_journal is off"
    assert runner.journal.dropped == 0, "the journal's bound cut rows: raise it"
    return runner.journal.rows()


def device_writes(events: list[Event], rows: list[WriteRecord], gateways: list[str],
                  lease_ttl_s: float = 2.0) -> DeviceWritesChecked:
    """tests.cluster_history.check_device_writes for this site (grace: one lease TTL)."""
    got = check_device_writes(events, rows, {g: SOURCES[g] for g in gateways}, OWNERS,
                              grace_s=lease_ttl_s)
    print(f"device writes checked against the store: {got.writes}; longest a written "
          f"value had been superseded: {got.max_lag_s:.3f} s; old holder's tail writes "
          f"{got.tails}; writes per term {got.terms}")
    return got


def writers(rows: list[WriteRecord], device: str) -> set[str]:
    """The gateways a device saw writes from (by their source addresses)."""
    by_ip = {ip: gw for gw, ip in SOURCES.items()}
    return {by_ip.get(r.peer[0], r.peer[0]) for r in rows if r.device == device and r.peer}
