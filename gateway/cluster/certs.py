"""`autogrid cluster certs`: a site CA and one certificate per gateway for etcd's TLS.

Each gateway's certificate serves both ways: as its etcd member's server and peer
certificate and as the gateway's client certificate (extended key usage serverAuth and
clientAuth). Its subject alternative names are the hosts of that gateway's member URLs, so
the other members and gateways can verify it by the address they dial; its CN is the
gateway id. Keys are EC P-256, written 0600 in a 0700 directory.

A site's CA is never replaced silently: making certificates where a CA already is needs
``--force`` (which invalidates every certificate it signed), and ``--gateway ID`` re-issues
one gateway's certificate from the CA that is there.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.cluster.config import ClusterConfig

CA_YEARS = 10
# A gateway certificate lives as long as its CA: an expired certificate on a box nobody
# visits would silently split the cluster. Re-issue one with --gateway ID.
BACKDATE = dt.timedelta(hours=1)  # tolerates a gateway whose clock is a little behind


class CertError(Exception):
    """A certificate cannot be made as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Names:
    """Where one site's files go in the output directory: the basenames of the config's
    tls: paths, or, where those would clash (tls paths without ``{gateway}``, or a gateway
    file named like the CA's), each gateway's files in a subdirectory named after it."""

    ca_cert: str
    ca_key: str
    per_gateway_dirs: bool = False

    def cert(self, cluster: ClusterConfig, gateway: str) -> tuple[str, str]:
        """(certificate, key) of ``gateway``, relative to the output directory."""
        if cluster.tls is None:
            cert, key = f"{gateway}.crt", f"{gateway}.key"
        else:
            _ca, cert_path, key_path = cluster.tls.for_gateway(gateway)
            cert, key = cert_path.name, key_path.name
        if self.per_gateway_dirs:
            return f"{gateway}/{cert}", f"{gateway}/{key}"
        return cert, key


def names_for(cluster: ClusterConfig, gateways: list[str]) -> Names:
    ca = cluster.tls.ca.name if cluster.tls is not None else "ca.crt"
    flat = Names(ca_cert=ca, ca_key=f"{Path(ca).stem}.key")
    files = [flat.ca_cert, flat.ca_key]
    for gw in gateways:
        files += flat.cert(cluster, gw)
    if len(set(files)) == len(files):
        return flat
    return Names(flat.ca_cert, flat.ca_key, per_gateway_dirs=True)


def member_hosts(cluster: ClusterConfig, gateway: str) -> list[str]:
    """The hosts of ``gateway``'s member URLs (client and peer), each once, in order."""
    member = cluster.member(gateway)
    if member is None:
        return []
    hosts: list[str] = []
    for url in (member.client_url, member.peer_url):
        host = urlsplit(url).hostname or ""
        if host and host not in hosts:
            hosts.append(host)
    return hosts


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _years_later(t: dt.datetime, years: int) -> dt.datetime:
    try:
        return t.replace(year=t.year + years)
    except ValueError:  # 29 February into a year that has none
        return t.replace(year=t.year + years, day=28)


def make_ca(site_name: str, now: dt.datetime | None = None
            ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed site CA, valid CA_YEARS, that may sign only end certificates."""
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "AutoGrid"),
                      x509.NameAttribute(NameOID.COMMON_NAME,
                                         f"AutoGrid site CA {site_name}"[:64])])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(_years_later(now, CA_YEARS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def make_gateway_cert(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
                      gateway: str, hosts: list[str], now: dt.datetime | None = None
                      ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """One gateway's server+client certificate, signed by the site CA, ending with it."""
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "AutoGrid"),
                         x509.NameAttribute(NameOID.COMMON_NAME, gateway[:64])])
    builder = (x509.CertificateBuilder()
               .subject_name(subject).issuer_name(ca_cert.subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - BACKDATE)
               .not_valid_after(ca_cert.not_valid_after_utc)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                              critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                     ExtendedKeyUsageOID.CLIENT_AUTH]),
                              critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _spki(public_key: CertificatePublicKeyTypes) -> bytes:
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return public_key.public_bytes(der, spki)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` with ``mode`` from the first byte (never readable by others in
    between), replacing ``path`` atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)  # the umask may have taken bits off the group/other read
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def prepare_dir(out: Path) -> None:
    """Make ``out`` 0700, or refuse one that others can enter (private keys go there)."""
    if not out.exists():
        out.mkdir(parents=True, mode=0o700)
        os.chmod(out, 0o700)
        return
    if not out.is_dir():
        raise CertError(f"{out} is not a directory")
    mode = stat.S_IMODE(out.stat().st_mode)
    if mode & 0o077:
        raise CertError(f"{out} is open to other users (mode {mode:04o}) and private keys "
                        f"go there: chmod 700 {out}, or give a new directory")


def _load_ca(out: Path, names: Names) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = out / names.ca_cert, out / names.ca_key
    for p in (cert_path, key_path):
        if not p.is_file():
            raise CertError(f"{p} is missing: --gateway re-issues from the site CA in "
                            f"{out}; make the CA first (autogrid cluster certs without "
                            f"--gateway)")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as exc:
        raise CertError(f"{cert_path}: not a PEM certificate ({exc})") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise CertError(f"{key_path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{key_path}: not an EC key (this CA was not made by autogrid)")
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise CertError(f"{key_path} is not the key of {cert_path}")
    return cert, key


@dataclass
class Issued:
    """What one run wrote, to tell the user."""

    ca_made: bool
    files: list[Path]
    not_after: dt.datetime


def issue(cluster: ClusterConfig, gateways: list[str], site_name: str, out: Path, *,
          only: str | None = None, force: bool = False) -> Issued:
    """Write the site CA (unless ``only``) and the certificates of ``gateways`` (or of
    ``only``) into ``out``. Raise CertError, before any key or certificate is written,
    when refused."""
    names = names_for(cluster, gateways)
    if only is not None and only not in gateways:
        raise CertError(f"unknown gateway '{only}' (gateways: {', '.join(gateways)})")
    prepare_dir(out)
    files: list[Path] = []
    if only is None:
        if (out / names.ca_cert).exists() and not force:
            raise CertError(f"{out / names.ca_cert} exists: this site has a CA already. "
                            f"Re-issue one gateway's certificate with --gateway ID; "
                            f"--force makes a new CA and invalidates every certificate "
                            f"the old one signed")
        ca_cert, ca_key = make_ca(site_name)
        _write(out / names.ca_key, _key_pem(ca_key), 0o600)
        _write(out / names.ca_cert, _cert_pem(ca_cert), 0o644)
        files += [out / names.ca_cert, out / names.ca_key]
        todo = gateways
    else:
        ca_cert, ca_key = _load_ca(out, names)
        todo = [only]
    for gw in todo:
        cert, key = make_gateway_cert(ca_cert, ca_key, gw, member_hosts(cluster, gw))
        cert_name, key_name = names.cert(cluster, gw)
        if names.per_gateway_dirs:
            (out / gw).mkdir(mode=0o700, exist_ok=True)
        _write(out / key_name, _key_pem(key), 0o600)
        _write(out / cert_name, _cert_pem(cert), 0o644)
        files += [out / cert_name, out / key_name]
    return Issued(ca_made=only is None, files=files, not_after=ca_cert.not_valid_after_utc)
