"""The ``cluster:`` section: which store the gateways of a site share, and how.

``backend: standalone`` (the default, also when the section is absent) keeps the store in
process, persisted under the state directory: one gateway, nothing to run beside it.
``backend: etcd`` names one etcd member per gateway; the gateways elect a leader on a lease
and every setpoint write is fenced by that leadership.

Example::

    cluster:
      backend: etcd
      lease_ttl_s: 2
      members:
        - {gateway: gw-main,  client_url: https://10.20.0.2:2379, peer_url: https://10.20.0.2:2380}
        - {gateway: gw-south, client_url: https://10.20.0.3:2379, peer_url: https://10.20.0.3:2380}
        - {gateway: gw-b,     client_url: https://10.20.0.4:2379, peer_url: https://10.20.0.4:2380}
      tls:
        ca: /etc/autogrid/cluster/ca.crt
        cert: /etc/autogrid/cluster/{gateway}.crt
        key: /etc/autogrid/cluster/{gateway}.key

``{gateway}`` in a TLS path is replaced by the id of the gateway that reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
        raise ValueError(f"'{value}' is not a URL like https://10.20.0.2:2379 "
                         f"(scheme http or https, a host and a port)")
    return value


class Member(_Strict):
    """One etcd member, run beside (and named after) one gateway."""

    gateway: str  # the gateway whose member this is (a `gateways:` id)
    client_url: str  # where gateways reach this member (etcd --advertise-client-urls)
    peer_url: str  # where the other members reach it (etcd --initial-advertise-peer-urls)

    _check_client = field_validator("client_url")(classmethod(lambda cls, v: _url(v)))
    _check_peer = field_validator("peer_url")(classmethod(lambda cls, v: _url(v)))


class ClusterTls(_Strict):
    """Client certificates for gateway-to-etcd and etcd peer traffic (one site CA)."""

    ca: Path  # the site CA certificate (PEM)
    cert: Path  # this gateway's certificate; "{gateway}" is replaced by its id
    key: Path  # its private key

    def for_gateway(self, gateway: str) -> tuple[Path, Path, Path]:
        """(ca, cert, key) with ``{gateway}`` replaced."""
        return (self.ca, Path(str(self.cert).replace("{gateway}", gateway)),
                Path(str(self.key).replace("{gateway}", gateway)))


class ClusterConfig(_Strict):
    backend: Literal["standalone", "etcd"] = "standalone"
    members: list[Member] = Field(default_factory=list)  # etcd: one per gateway
    # Leadership lease: a leader that cannot renew it for this long is replaced.
    lease_ttl_s: Annotated[float, Field(ge=1, le=60)] = 2.0
    # Where this site's keys live in etcd (several sites may share one etcd).
    prefix: str = "/autogrid"
    tls: ClusterTls | None = None
    # etcd without TLS is refused unless said here (a lab, or loopback-only tests).
    allow_plaintext: bool = False
    # A device taken over by a standby goes back to its owner only after the owner has been
    # healthy this long (or an operator moves it back): no flapping.
    handback_after_s: Annotated[float, Field(ge=0, le=86400)] = 300.0
    # A gateway whose own member fails goes on through the other members (false: only its
    # own member, so losing it cuts the gateway off).
    switch_members: bool = True
    # etcd's initial cluster token (keeps members of different sites apart).
    token: str = "autogrid"

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/") or value.endswith("/") or "//" in value:
            raise ValueError(f"'{value}' is not a key prefix like /autogrid/campus "
                             f"(starts with '/', no trailing '/')")
        return value

    @model_validator(mode="after")
    def _etcd_needs(self) -> ClusterConfig:
        if self.backend == "etcd":
            if not self.members:
                raise ValueError("backend etcd needs members: one etcd member per gateway")
            plain = [m.gateway for m in self.members
                     if urlsplit(m.client_url).scheme == "http"
                     or urlsplit(m.peer_url).scheme == "http"]
            if (self.tls is None or plain) and not self.allow_plaintext:
                what = ("no tls: section" if self.tls is None
                        else f"http:// URLs for {', '.join(plain)}")
                raise ValueError(f"a plaintext cluster ({what}) is refused: give tls: "
                                 f"(ca, cert, key; make them with `autogrid cluster certs`) "
                                 f"and https:// URLs, or say allow_plaintext: true")
        return self

    def member(self, gateway: str) -> Member | None:
        return next((m for m in self.members if m.gateway == gateway), None)


def held_back(cluster: ClusterConfig | None, standby_gateways: list[str]) -> bool:
    """True for a device that is not polled at start: it names standby gateways on an etcd
    cluster, so it is polled only under an ownership record naming this gateway (the
    takeover loop of gateway.cluster.takeover)."""
    return bool(standby_gateways) and cluster is not None and cluster.backend == "etcd"


def endpoint_of(url: str) -> tuple[str, int]:
    """(host, port) of a member URL (validated by the section: both are there)."""
    u = urlsplit(url)
    assert u.hostname is not None and u.port is not None
    return u.hostname, u.port
