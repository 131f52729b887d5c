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

import aetcd
import grpc
from aetcd import rpc, watcher


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
