"""`autogrid check` on the ``cluster:`` section and the devices' ``standby_gateways``:
references to gateways, one member per gateway, no shared URLs (declared in
gateway.config.sections)."""

from __future__ import annotations

from gateway.config.models import SiteConfig
from gateway.yamlsrc import Problem, Source


def check_cluster(cfg: SiteConfig, src: Source) -> list[Problem]:
    gateways = [g.id for g in cfg.gateways]
    out: list[Problem] = []
    cluster = cfg.cluster
    if cluster is not None and cluster.backend == "etcd":
        seen_gw: set[str] = set()
        seen_url: dict[str, str] = {}
        for i, m in enumerate(cluster.members):
            where = ("cluster", "members", i)
            if m.gateway not in gateways:
                out.append(src.problem((*where, "gateway"),
                                       f"unknown gateway '{m.gateway}' (gateways: "
                                       f"{', '.join(gateways)})"))
            elif m.gateway in seen_gw:
                out.append(src.problem((*where, "gateway"),
                                       f"gateway '{m.gateway}' has a member already"))
            seen_gw.add(m.gateway)
            for field in ("client_url", "peer_url"):
                url = getattr(m, field)
                if url in seen_url:
                    out.append(src.problem((*where, field),
                                           f"'{url}' is already the {seen_url[url]}"))
                seen_url[url] = f"{field} of {m.gateway}"
        missing = [g for g in gateways if g not in seen_gw]
        if missing:
            out.append(src.problem(("cluster", "members"),
                                   f"no etcd member for gateway(s) {', '.join(missing)}: "
                                   f"each gateway runs one member"))
    for i, d in enumerate(cfg.devices):
        owner = d.gateway or gateways[0]
        for j, g in enumerate(d.standby_gateways):
            at = ("devices", i, "standby_gateways", j)
            if g not in gateways:
                out.append(src.problem(at, f"unknown gateway '{g}' (gateways: "
                                              f"{', '.join(gateways)})"))
            elif g == owner:
                out.append(src.problem(at, f"'{g}' owns {d.id}; a standby is another "
                                              f"gateway"))
        unset = cluster is None and ("cluster",) not in src.keys  # not an invalid section
        if d.standby_gateways and (unset or (cluster is not None
                                             and cluster.backend != "etcd")):
            out.append(src.problem(("devices", i, "standby_gateways"),
                                   "standby gateways need a cluster (cluster: backend: etcd)"))
    return out
