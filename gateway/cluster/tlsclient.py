"""An aetcd client that speaks TLS with a client certificate.

aetcd 1.0 opens only plaintext gRPC channels (``Client.connect`` calls
``grpc.aio.insecure_channel``) and takes no certificate parameters. :class:`TlsClient` is
the same client whose ``connect`` opens a ``grpc.aio.secure_channel`` with the site CA as
the only trusted root and the gateway's certificate and key as its identity; everything
else (KV, leases, watches, transactions) is aetcd's own. aetcd is pinned below 2, whose
``connect`` this mirrors.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aetcd
import grpc
from aetcd import rpc, watcher

from gateway.cluster.config import ClusterConfig


def channel_credentials(ca: Path, cert: Path | None, key: Path | None
                        ) -> grpc.ChannelCredentials:
    """Trust only the site CA; present ``cert``/``key`` when given (etcd's
    client-cert-auth refuses a client without them)."""
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key is not None else None,
        certificate_chain=cert.read_bytes() if cert is not None else None)


class TlsClient(aetcd.Client):
    """``aetcd.Client`` over TLS. The certificate files are read when it connects, so a
    missing or unreadable file is an OSError from ``connect``, naming the file."""

    _connected: asyncio.Event  # aetcd's own state, which ``connect`` drives
    _is_connecting: bool

    def __init__(self, host: str, port: int, *, ca: Path, cert: Path | None = None,
                 key: Path | None = None, **kwargs: Any) -> None:
        if kwargs.get("username") is not None:
            raise ValueError("TlsClient authenticates by client certificate, not by user")
        super().__init__(host, port, **kwargs)
        self._tls_files = (ca, cert, key)

    async def connect(self) -> None:
        if self._connected.is_set() or self._is_connecting:
            await super().connect()  # connected, or waits for the connect under way
            return
        self._is_connecting = True
        try:
            creds = channel_credentials(*self._tls_files)
            self.channel = rpc.secure_channel(f"{self._host}:{self._port}", creds,
                                              options=self._options.items())
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = watcher.Watcher(rpc.WatchStub(self.channel),
                                            timeout=self._timeout, metadata=self.metadata)
            self._connected.set()
        finally:
            self._is_connecting = False


def client_for(cluster: ClusterConfig, gateway: str, *, config_dir: Path,
               endpoint: tuple[str, int] | None = None, member_of: str | None = None,
               **kwargs: Any) -> aetcd.Client:
    """The client with which ``gateway`` reaches etcd: at its own member's client URL, or
    the member of gateway ``member_of`` (or at ``endpoint``, e.g. a proxy in front of
    it), over TLS with ``gateway``'s certificate when the URL is https, checking the
    member's name. Relative tls: paths are relative to ``config_dir`` (the config file's
    directory), as `autogrid cluster etcd-config` writes them for etcd."""
    member = cluster.member(member_of or gateway)
    if member is None:
        raise ValueError(f"gateway '{member_of or gateway}' has no etcd member in "
                         f"cluster.members")
    url = urlsplit(member.client_url)
    host, port = endpoint or (url.hostname or "", url.port or 2379)
    if url.scheme == "http":
        return aetcd.Client(host, port, **kwargs)
    if cluster.tls is None:
        raise ValueError(f"{member.client_url} is https but the cluster has no tls: section")
    ca, cert, key = (config_dir / p for p in cluster.tls.for_gateway(gateway))
    if endpoint is not None:  # still verify the member by the name its certificate has
        options = dict(kwargs.pop("options", None) or {})
        options.setdefault("grpc.ssl_target_name_override", url.hostname)
        kwargs["options"] = options
    return TlsClient(host, port, ca=ca, cert=cert, key=key, **kwargs)
