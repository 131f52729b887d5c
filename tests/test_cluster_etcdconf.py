"""`autogrid cluster etcd-config`: one member's etcd configuration from the site config, the
same as command-line flags for launchers, and the warning on etcd versions under advisory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from gateway.cli import main as autogrid
from gateway.cluster.config import ClusterConfig
from gateway.cluster.etcdbin import etcd_version, find_etcd, version_advisory
from gateway.cluster.etcdconf import (
    EtcdConfigError,
    config_to_flags,
    member_config,
    member_flags,
)
from tests.cluster_site import site_yaml

GATEWAYS = ["gw-a", "gw-b", "gw-c"]
PORTS = [23791, 23801, 23792, 23802, 23793, 23803]


def _cluster(text: str) -> ClusterConfig:
    return ClusterConfig.model_validate(yaml.safe_load(text)["cluster"])


def test_member_config_of_a_tls_site() -> None:
    cluster = _cluster(site_yaml(GATEWAYS, PORTS))
    conf = member_config(cluster, "gw-b", data_dir=Path("/srv/etcd"))
    assert conf["name"] == "gw-b"
    assert conf["data-dir"] == "/srv/etcd"
    assert conf["listen-client-urls"] == conf["advertise-client-urls"] == \
        "https://127.0.0.1:23792"
    assert conf["listen-peer-urls"] == conf["initial-advertise-peer-urls"] == \
        "https://127.0.0.1:23802"
    assert conf["initial-cluster"] == ("gw-a=https://127.0.0.1:23801,"
                                       "gw-b=https://127.0.0.1:23802,"
                                       "gw-c=https://127.0.0.1:23803")
    assert conf["initial-cluster-token"] == "tls-test"
    assert conf["initial-cluster-state"] == "new"
    tls = {"cert-file": "tls/gw-b.crt", "key-file": "tls/gw-b.key",
           "trusted-ca-file": "tls/ca.crt", "client-cert-auth": True}
    assert conf["client-transport-security"] == conf["peer-transport-security"] == tls
    moved = member_config(cluster, "gw-b", cert_dir=Path("/etc/etcd/tls"))
    assert moved["peer-transport-security"]["key-file"] == "/etc/etcd/tls/gw-b.key"


def test_plaintext_site_has_no_transport_security() -> None:
    conf = member_config(_cluster(site_yaml(GATEWAYS, PORTS, tls=False)), "gw-a")
    assert "client-transport-security" not in conf and "peer-transport-security" not in conf
    assert conf["listen-client-urls"] == "http://127.0.0.1:23791"


def test_flags_say_what_the_file_says() -> None:
    cluster = _cluster(site_yaml(GATEWAYS, PORTS))
    flags = member_flags(cluster, "gw-c", data_dir=Path("/d"))
    assert "--name=gw-c" in flags and "--data-dir=/d" in flags
    assert "--initial-cluster-state=new" in flags
    for prefix in ("", "peer-"):
        assert f"--{prefix}cert-file=tls/gw-c.crt" in flags
        assert f"--{prefix}key-file=tls/gw-c.key" in flags
        assert f"--{prefix}trusted-ca-file=tls/ca.crt" in flags
        assert f"--{prefix}client-cert-auth=true" in flags
    assert len(flags) == len(set(flags)) == 10 + 2 * 4
    assert config_to_flags({"enable-v2": False}) == ["--enable-v2=false"]


def test_names_and_ipv6_hosts() -> None:
    text = site_yaml(GATEWAYS, PORTS).replace("https://127.0.0.1:23792",
                                              "https://etcd-b.site.example:23792")
    text = text.replace("https://127.0.0.1:23793", "'https://[fd00::3]:23793'")
    cluster = _cluster(text)
    with pytest.raises(EtcdConfigError, match=r"'etcd-b\.site\.example' is a name .*--listen-ip"):
        member_config(cluster, "gw-b")
    conf = member_config(cluster, "gw-b", listen_ip="10.20.0.3")
    assert conf["listen-client-urls"] == "https://10.20.0.3:23792"
    assert conf["advertise-client-urls"] == "https://etcd-b.site.example:23792"
    assert member_config(cluster, "gw-c")["listen-client-urls"] == "https://[fd00::3]:23793"
    with pytest.raises(EtcdConfigError, match="'gw-x' has no etcd member"):
        member_config(cluster, "gw-x")


def test_cli_writes_the_file_with_paths_from_the_config_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(site_yaml(GATEWAYS, PORTS), encoding="utf-8")
    out = tmp_path / "etcd.yaml"
    assert autogrid(["cluster", "etcd-config", "-c", str(site), "--gateway", "gw-a",
                     "--data-dir", "/var/lib/etcd/x", "--out", str(out)]) == 0
    written = yaml.safe_load(out.read_text(encoding="utf-8"))
    expected = member_config(_cluster(site.read_text()), "gw-a",
                             data_dir=Path("/var/lib/etcd/x"))
    for section in ("client-transport-security", "peer-transport-security"):
        for key in ("cert-file", "key-file", "trusted-ca-file"):
            expected[section][key] = str(tmp_path / expected[section][key])
    assert written == expected
    capsys.readouterr()
    assert autogrid(["cluster", "etcd-config", "-c", str(site), "--gateway", "gw-x"]) == 1
    err = capsys.readouterr().err
    assert "'gw-x' has no etcd member" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("version", "warned"), [
    ((3, 4, 23), False), ((3, 5, 0), True), ((3, 5, 1), True), ((3, 5, 2), True),
    ((3, 5, 3), False), ((3, 6, 0), False), ((3, 3, 27), True)])
def test_version_advisory(version: tuple[int, int, int], warned: bool) -> None:
    assert (version_advisory(version) is not None) == warned


def _fake_etcd(bin_dir: Path, version: str) -> None:
    """An `etcd` that only answers --version, as etcd prints it."""
    bin_dir.mkdir()
    exe = bin_dir / "etcd"
    exe.write_text(f"#!/bin/sh\necho 'etcd Version: {version}'\necho 'Git SHA: 0'\n")
    exe.chmod(0o755)


@pytest.mark.parametrize(("version", "warned"), [("3.5.2", True), ("3.4.23", False)])
def test_cli_warns_on_the_local_etcd_version(tmp_path: Path, version: str, warned: bool,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    _fake_etcd(tmp_path / "bin", version)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    site = tmp_path / "site.yaml"
    site.write_text(site_yaml(GATEWAYS, PORTS), encoding="utf-8")
    assert autogrid(["cluster", "etcd-config", "-c", str(site), "--gateway", "gw-a"]) == 0
    captured = capsys.readouterr()
    assert "name: gw-a" in captured.out
    assert (f"etcd {version} carries the upstream data-inconsistency advisory"
            in captured.err) == warned


def test_the_test_etcd_reports_its_version() -> None:
    binary = find_etcd()
    if binary is None:
        pytest.skip("no etcd binary")
    version = etcd_version(binary)
    assert version is not None and version >= (3, 4, 0)
