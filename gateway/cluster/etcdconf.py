"""One etcd member's configuration, from the site config's ``cluster:`` section.

:func:`member_config` is the YAML configuration file etcd reads with ``--config-file`` (or
``ETCD_CONFIG_FILE`` in Debian's /etc/default/etcd); :func:`member_flags` is the same as
command-line flags, for a launcher that starts etcd itself (tests, the demo). Both are pure:
no file or network is touched.

etcd binds only to IP addresses (or ``localhost``), so a member URL that names its host by
DNS name needs the address to listen on (``listen_ip``).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:  # (`autogrid --help` reads DEFAULT_DATA_DIR: no pydantic for that)
    from gateway.cluster.config import ClusterConfig

DEFAULT_DATA_DIR = Path("/var/lib/etcd/autogrid")


class EtcdConfigError(ValueError):
    """The member's configuration cannot be written as asked; the message says why."""


def _listen_url(url: str, listen_ip: str | None, what: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if listen_ip is None:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if host != "localhost":
                raise EtcdConfigError(
                    f"the {what} host '{host}' is a name and etcd listens only on IP "
                    f"addresses: give the address to listen on (--listen-ip)") from None
        listen_host = host
    else:
        try:
            ipaddress.ip_address(listen_ip)
        except ValueError:
            raise EtcdConfigError(f"--listen-ip '{listen_ip}' is not an IP address") from None
        listen_host = listen_ip
    if ":" in listen_host:  # IPv6 literal
        listen_host = f"[{listen_host}]"
    return urlunsplit((parts.scheme, f"{listen_host}:{parts.port}", "", "", ""))


def _tls_files(cluster: ClusterConfig, gateway: str, cert_dir: Path | None
               ) -> tuple[Path, Path, Path] | None:
    if cluster.tls is None:
        return None
    ca, cert, key = cluster.tls.for_gateway(gateway)
    if cert_dir is not None:
        return cert_dir / ca.name, cert_dir / cert.name, cert_dir / key.name
    return ca, cert, key


def member_config(cluster: ClusterConfig, gateway: str, *, data_dir: Path = DEFAULT_DATA_DIR,
                  listen_ip: str | None = None, cert_dir: Path | None = None
                  ) -> dict[str, Any]:
    """etcd's configuration-file keys for ``gateway``'s member (a new cluster of all the
    members of ``cluster``). TLS files are those of the config's ``tls:`` for this gateway,
    or the same names in ``cert_dir`` (a copy etcd's own user may read)."""
    member = cluster.member(gateway)
    if member is None:
        known = ", ".join(m.gateway for m in cluster.members) or "none"
        raise EtcdConfigError(f"gateway '{gateway}' has no etcd member in cluster.members "
                              f"(members: {known})")
    conf: dict[str, Any] = {
        "name": gateway,
        "data-dir": str(data_dir),
        "listen-client-urls": _listen_url(member.client_url, listen_ip, "client_url"),
        "advertise-client-urls": member.client_url,
        "listen-peer-urls": _listen_url(member.peer_url, listen_ip, "peer_url"),
        "initial-advertise-peer-urls": member.peer_url,
        "initial-cluster": ",".join(f"{m.gateway}={m.peer_url}" for m in cluster.members),
        "initial-cluster-token": cluster.token,
        "initial-cluster-state": "new",
        "logger": "zap",
    }
    files = _tls_files(cluster, gateway, cert_dir)
    if files is not None:
        ca, cert, key = files
        security = {"cert-file": str(cert), "key-file": str(key),
                    "trusted-ca-file": str(ca), "client-cert-auth": True}
        conf["client-transport-security"] = dict(security)
        conf["peer-transport-security"] = dict(security)
    return conf


# Flag names of the transport-security keys (the file nests them; the command line does not).
_CLIENT_FLAGS = {"cert-file": "cert-file", "key-file": "key-file",
                 "trusted-ca-file": "trusted-ca-file", "client-cert-auth": "client-cert-auth"}
_PEER_FLAGS = {k: f"peer-{v}" for k, v in _CLIENT_FLAGS.items()}


def _flag(name: str, value: Any) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return f"--{name}={text}"


def config_to_flags(conf: dict[str, Any]) -> list[str]:
    """The command-line flags that say what the configuration file ``conf`` says."""
    flags: list[str] = []
    for key, value in conf.items():
        if key in ("client-transport-security", "peer-transport-security"):
            names = _CLIENT_FLAGS if key.startswith("client") else _PEER_FLAGS
            flags += [_flag(names[k], v) for k, v in value.items()]
        else:
            flags.append(_flag(key, value))
    return flags


def member_flags(cluster: ClusterConfig, gateway: str, *, data_dir: Path = DEFAULT_DATA_DIR,
                 listen_ip: str | None = None, cert_dir: Path | None = None) -> list[str]:
    """:func:`member_config` as etcd command-line flags (``etcd *member_flags(...)``)."""
    return config_to_flags(member_config(cluster, gateway, data_dir=data_dir,
                                         listen_ip=listen_ip, cert_dir=cert_dir))
