"""`autogrid cluster ...`: the command group of the multi-gateway cluster.

A subcommand is one :class:`Subcommand` entry in ``SUBCOMMANDS``: its name, a help line,
a function that adds its arguments and the function that runs it. The parser is built on
every call of `autogrid`, so this module imports nothing heavy; each run function imports
what it needs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXIT_OK = 0


class ClusterCommandError(RuntimeError):
    """A refusal the user can act on; `autogrid` prints it as one line."""


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _site(args: argparse.Namespace) -> tuple[Any, Any]:
    """(loaded config, its etcd cluster section), or a positioned refusal."""
    from gateway.config.loader import load_config

    loaded = load_config(args.config)
    cluster = loaded.config.cluster
    if cluster is None or cluster.backend != "etcd":
        where = loaded.source.problem(("cluster", "backend"),
                                      "this site has no etcd cluster (cluster: backend: "
                                      "etcd, with its members); nothing to do")
        raise ClusterCommandError(str(where))
    return loaded, cluster


# --- autogrid cluster certs ---------------------------------------------------------------

def _certs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help="site config (YAML)")
    p.add_argument("--out", required=True,
                   help="directory for the CA and the certificates (made 0700)")
    p.add_argument("--gateway", help="(re)issue only this gateway's certificate, from the "
                                     "CA already in --out")
    p.add_argument("--force", action="store_true",
                   help="replace the site's CA in --out (every certificate it signed stops "
                        "working)")


def _run_certs(args: argparse.Namespace) -> int:
    from gateway.cluster.certs import CertError, issue, names_for

    loaded, cluster = _site(args)
    gateways = [g.id for g in loaded.config.gateways]
    out = Path(args.out)
    try:
        done = issue(cluster, gateways, loaded.config.site.name, out, only=args.gateway,
                     force=args.force)
    except CertError as exc:
        raise ClusterCommandError(str(exc)) from None
    names = names_for(cluster, gateways)
    for f in done.files:
        print(f"wrote {f}")
    print(f"valid until {done.not_after:%Y-%m-%d} (the CA's end)")
    for gw in [args.gateway] if args.gateway else gateways:
        cert, key = names.cert(cluster, gw)
        if cluster.tls is not None:  # relative paths are relative to the config file
            base = loaded.path.resolve().parent
            ca_to, cert_to, key_to = (base / p for p in cluster.tls.for_gateway(gw))
            if (out / cert).resolve() != cert_to:
                print(f"{gw}: copy {out / names.ca_cert} to {ca_to}, {out / cert} to "
                      f"{cert_to}, {out / key} to {key_to}")
    if done.ca_made:
        print(f"keep {out / names.ca_key} off the gateways: it signs certificates the "
              f"cluster trusts")
    return EXIT_OK


# --- autogrid cluster etcd-config ---------------------------------------------------------

def _etcd_config_args(p: argparse.ArgumentParser) -> None:
    from gateway.cluster.etcdconf import DEFAULT_DATA_DIR

    p.add_argument("-c", "--config", required=True, help="site config (YAML)")
    p.add_argument("--gateway", required=True, help="the gateway whose etcd member this is")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR),
                   help="etcd's data directory on that gateway")
    p.add_argument("--out", help="write the YAML here (default: standard output)")
    p.add_argument("--cert-dir", help="etcd reads the CA, certificate and key under these "
                                      "names from this directory instead of the config's "
                                      "tls: paths (a copy etcd's own user may read)")
    p.add_argument("--listen-ip", help="address to listen on when the member's URLs name "
                                       "their host by DNS name (etcd binds only to IPs)")


def _run_etcd_config(args: argparse.Namespace) -> int:
    import yaml

    from gateway.cluster.etcdbin import etcd_version, find_etcd, version_advisory
    from gateway.cluster.etcdconf import EtcdConfigError, member_config

    loaded, cluster = _site(args)
    base = loaded.path.resolve().parent
    cert_dir = Path(args.cert_dir).absolute() if args.cert_dir else None
    try:
        conf = member_config(cluster, args.gateway, data_dir=Path(args.data_dir),
                             listen_ip=args.listen_ip, cert_dir=cert_dir)
    except EtcdConfigError as exc:
        raise ClusterCommandError(f"{loaded.path}: {exc}") from None
    for section in ("client-transport-security", "peer-transport-security"):
        for key in ("cert-file", "key-file", "trusted-ca-file"):
            if section in conf:  # etcd runs elsewhere: relative to the config, as templates
                conf[section][key] = str(base / conf[section][key])
    text = (f"# etcd member {args.gateway} of site '{loaded.config.site.name}', written by "
            f"`autogrid cluster etcd-config` from {loaded.path}.\n"
            f"# Debian etcd-server: ETCD_CONFIG_FILE=<this file> in /etc/default/etcd.\n"
            + yaml.safe_dump(conf, sort_keys=False))
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    binary = find_etcd()
    version = etcd_version(binary) if binary is not None else None
    advisory = version_advisory(version) if version is not None else None
    if binary is None:
        print("note: no etcd here to check its version (Debian: apt-get install "
              "etcd-server; run 3.4.23 or >= 3.5.3)", file=sys.stderr)
    elif advisory:
        print(f"warning: {binary}: {advisory}", file=sys.stderr)
    return EXIT_OK


# --- autogrid cluster status --------------------------------------------------------------

def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help="site config (YAML)")
    p.add_argument("--gateway", help="whose certificate to present on a TLS cluster "
                                     "(default: the site's first gateway)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--timeout", type=float, default=2.0,
                   help="seconds to wait for each etcd member")


def _run_status(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from gateway.cluster.status import gather, render

    loaded, cluster = _site(args)
    gw = args.gateway or loaded.config.gateways[0].id
    if cluster.member(gw) is None:
        raise ClusterCommandError(f"gateway '{gw}' has no etcd member in cluster.members")
    st = asyncio.run(gather(loaded.config, args.timeout, gateway=gw,
                            config_dir=loaded.path.resolve().parent))
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        render(st, sys.stdout)
    return EXIT_OK if st["reachable"] and st.get("leader") and not st.get("error") else 1


# --- autogrid cluster move ----------------------------------------------------------------

def _move_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help="site config (YAML)")
    p.add_argument("device", help="a device with standby_gateways")
    p.add_argument("to", metavar="GATEWAY", help="its owner or one of its standby gateways")
    p.add_argument("--on", help="the gateway whose API is asked (any: one that does not "
                                "lead forwards it to the leader, which does the move; "
                                "default: the first gateway)")


def _run_move(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.apiclient import ApiClient, ApiRequestError, ApiUnavailable
    from gateway.daemon import socket_path_for

    loaded, _cluster = _site(args)
    cfg = loaded.config
    on = args.on or cfg.gateways[0].id
    if on not in [g.id for g in cfg.gateways]:
        raise ClusterCommandError(f"--on: unknown gateway '{on}'")

    async def ask() -> Any:
        async with ApiClient(socket_path_for(cfg, on)) as api:
            return await api.request("device_move", device=args.device, gateway=args.to)
    try:
        got = asyncio.run(ask())
    except (ApiRequestError, ApiUnavailable) as exc:
        raise ClusterCommandError(f"device_move on {on}: {exc}") from None
    by = got.get("carried_out_by") or on  # (asked on a follower: the leader wrote it)
    print(f"{got['device']} moves to {got['gateway']} (ownership record written by {by}"
          + (f", asked on {on})" if by != on else ")"))
    return EXIT_OK


SUBCOMMANDS: list[Subcommand] = [
    Subcommand("certs", "make the site CA and each gateway's etcd TLS certificate and key",
               _certs_args, _run_certs),
    Subcommand("etcd-config", "write one gateway's etcd member configuration (YAML)",
               _etcd_config_args, _run_etcd_config),
    Subcommand("status", "members, leader and term, lease ages, per-gateway health and "
                         "devices (exit 1: no member answers or no gateway leads)",
               _status_args, _run_status),
    Subcommand("move", "move a standby-capable device to its owner or a standby gateway "
                       "(asked on any gateway, done by the leader; operator role; audited)",
               _move_args, _run_move),
]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               formatter: type[argparse.HelpFormatter] | None = None) -> None:
    """The `autogrid cluster` group and its subcommands."""
    c = sub.add_parser("cluster", help="the multi-gateway cluster on etcd: certificates, "
                                       "member configuration, status")
    cs = c.add_subparsers(dest="cluster_command", metavar="SUBCOMMAND", required=True)
    for s in SUBCOMMANDS:
        p = cs.add_parser(s.name, help=s.help,
                          description=s.help[0].upper() + s.help[1:] + ".")
        if formatter is not None:
            p.formatter_class = formatter
        s.add_arguments(p)


def cmd_cluster(args: argparse.Namespace) -> int:
    by_name = {s.name: s for s in SUBCOMMANDS}
    return by_name[args.cluster_command].run(args)
