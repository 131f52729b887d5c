"""`autogrid cluster ...` commands (status here; certs and etcd-config live beside it)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any


def add_parser(sub: Any) -> None:
    c = sub.add_parser("cluster", help="the site's gateway cluster (etcd): status")
    csub = c.add_subparsers(dest="cluster_command", metavar="SUBCOMMAND", required=True)
    st = csub.add_parser("status", help="members, leader, term, lease ages, per-gateway "
                                        "health and devices (exit 1: no member answers or "
                                        "no leader)")
    st.add_argument("-c", "--config", required=True, help="site config (YAML)")
    st.add_argument("--json", action="store_true", help="print JSON instead of text")
    st.add_argument("--timeout", type=float, default=2.0,
                    help="seconds to wait for each etcd member")


def cmd_cluster(args: argparse.Namespace) -> int:
    from gateway.config.loader import load_config

    cfg = load_config(args.config).config
    cl = cfg.cluster
    if cl is None or cl.backend != "etcd":
        gw = cfg.gateways[0].id
        msg = {"backend": "standalone", "gateway": gw, "leader": {"gateway": gw, "term": 1}}
        print(json.dumps(msg) if args.json else
              f"standalone: one gateway ({gw}) leads itself; no cluster to show")
        return 0
    from gateway.cluster.status import gather, render

    st = asyncio.run(gather(cfg, args.timeout))
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        render(st, sys.stdout)
    return 0 if st["reachable"] and st.get("leader") and not st.get("error") else 1
