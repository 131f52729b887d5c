"""`autogrid cluster certs`: a site CA and per-gateway certificates that etcd and the
gateways can use both ways, written privately, and a CA that is never replaced silently."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.cli import main as autogrid
from tests.cluster_site import site_yaml

GATEWAYS = ["gw-a", "gw-b", "gw-c"]


@pytest.fixture
def site(tmp_path: Path) -> Path:
    text = site_yaml(GATEWAYS, [23791, 23801, 23792, 23802, 23793, 23803])
    # gw-c is reached by name for clients and by address for peers
    text = text.replace("https://127.0.0.1:23793", "https://etcd-c.site.example:23793")
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_and_gateway_certificates(site: Path, tmp_path: Path) -> None:
    out = tmp_path / "tls"
    assert autogrid(["cluster", "certs", "-c", str(site), "--out", str(out)]) == 0
    assert _mode(out) == 0o700
    ca = _cert(out / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    start, end = ca.not_valid_before_utc, ca.not_valid_after_utc
    assert start.replace(year=start.year + 10) <= end <= start.replace(year=start.year + 10,
                                                                       month=12, day=31)
    assert _mode(out / "ca.key") == 0o600
    for gw in GATEWAYS:
        cert = _cert(out / f"{gw}.crt")
        cert.verify_directly_issued_by(ca)
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == gw
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        key = load_pem_private_key((out / f"{gw}.key").read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.public_key().public_numbers() == cert.public_key().public_numbers()
        assert _mode(out / f"{gw}.key") == 0o600
    san = _cert(out / "gw-a.crt").extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == []
    san_c = _cert(out / "gw-c.crt").extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert san_c.get_values_for_type(x509.DNSName) == ["etcd-c.site.example"]
    assert san_c.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


def test_existing_ca_is_not_replaced_without_force(site: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tls"
    assert autogrid(["cluster", "certs", "-c", str(site), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert autogrid(["cluster", "certs", "-c", str(site), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "has a CA already" in err and "--force" in err and "--gateway" in err
    assert len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert autogrid(["cluster", "certs", "-c", str(site), "--out", str(out), "--force"]) == 0
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after.keys() == before.keys()
    assert all(after[name] != before[name] for name in before)


def test_one_gateway_is_reissued_from_the_existing_ca(site: Path, tmp_path: Path) -> None:
    out = tmp_path / "tls"
    assert autogrid(["cluster", "certs", "-c", str(site), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert autogrid(["cluster", "certs", "-c", str(site), "--out", str(out),
                     "--gateway", "gw-b"]) == 0
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    changed = {name for name in before if after[name] != before[name]}
    assert changed == {"gw-b.crt", "gw-b.key"}
    _cert(out / "gw-b.crt").verify_directly_issued_by(_cert(out / "ca.crt"))


@pytest.mark.parametrize(("args", "expected"), [
    (["--gateway", "gw-b"], "ca.crt is missing"),  # no CA yet to re-issue from
    (["--gateway", "gw-x"], "unknown gateway 'gw-x' (gateways: gw-a, gw-b, gw-c)"),
])
def test_refusals_name_the_problem(site: Path, tmp_path: Path, args: list[str], expected: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tls"
    assert autogrid(["cluster", "certs", "-c", str(site), "--out", str(out), *args]) == 1
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1
    assert not list(out.glob("*.crt")) if out.exists() else True


def test_a_directory_open_to_others_is_refused(site: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "shared"
    out.mkdir(mode=0o755)
    out.chmod(0o755)
    assert autogrid(["cluster", "certs", "-c", str(site), "--out", str(out)]) == 1
    assert "open to other users (mode 0755)" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_a_site_without_an_etcd_cluster_is_told_where(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    site = tmp_path / "site.yaml"
    text = site_yaml(["gw1"], [1, 2]).split("cluster:")[0] + "cluster:\n  backend: standalone\n"
    site.write_text(text, encoding="utf-8")
    assert autogrid(["cluster", "certs", "-c", str(site), "--out", str(tmp_path / "t")]) == 1
    err = capsys.readouterr().err.strip()
    line = text.splitlines().index("  backend: standalone") + 1
    assert f"{site}:{line}:" in err and "cluster.backend" in err and "no etcd cluster" in err


def test_tls_paths_without_the_gateway_placeholder_get_one_directory_per_gateway(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = site_yaml(GATEWAYS, [23791, 23801, 23792, 23802, 23793, 23803])
    text = text.replace("cert: tls/{gateway}.crt", "cert: /etc/autogrid/cluster/gw.crt")
    text = text.replace("key: tls/{gateway}.key", "key: /etc/autogrid/cluster/gw.key")
    site = tmp_path / "site.yaml"
    site.write_text(text, encoding="utf-8")
    out = tmp_path / "tls"
    assert autogrid(["cluster", "certs", "-c", str(site), "--out", str(out)]) == 0
    ca = _cert(out / "ca.crt")
    for gw in GATEWAYS:  # each in its own place, none overwritten by the next
        cert = _cert(out / gw / "gw.crt")
        cert.verify_directly_issued_by(ca)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == gw
        assert _mode(out / gw) == 0o700 and _mode(out / gw / "gw.key") == 0o600
    assert f"gw-b: copy {out}/ca.crt to {tmp_path}/tls/ca.crt, {out}/gw-b/gw.crt to " \
           f"/etc/autogrid/cluster/gw.crt" in capsys.readouterr().out
