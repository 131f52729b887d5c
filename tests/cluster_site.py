"""Test helper: a site config of N gateways, each with an etcd member on 127.0.0.1."""

from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports the kernel just gave out on 127.0.0.1 (all held until known)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def site_yaml(gateways: list[str], ports: list[int], *, tls: bool = True) -> str:
    """A site of ``gateways`` (no devices) with one etcd member each on 127.0.0.1."""
    scheme = "https" if tls else "http"
    members = "\n".join(
        f"    - {{gateway: {gw}, client_url: {scheme}://127.0.0.1:{ports[2 * i]}, "
        f"peer_url: {scheme}://127.0.0.1:{ports[2 * i + 1]}}}"
        for i, gw in enumerate(gateways))
    tls_part = ("  tls:\n    ca: tls/ca.crt\n    cert: tls/{gateway}.crt\n"
                "    key: tls/{gateway}.key\n") if tls else "  allow_plaintext: true\n"
    gws = "\n".join(f"  - id: {gw}" for gw in gateways)
    return (f"site:\n  name: Cluster TLS test\n  timezone: Europe/Berlin\n"
            f"  grid: {{import_limit_kw: 100, export_limit_kw: 50}}\n"
            f"gateways:\n{gws}\nconnections: []\ndevices: []\n"
            f"cluster:\n  backend: etcd\n  token: tls-test\n  members:\n{members}\n"
            f"{tls_part}")
