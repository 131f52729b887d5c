"""The cluster deployment section's example config is a valid site and gives the etcd
member configuration the README's production deployment part describes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from gateway.cli import main as autogrid
from tests.conftest import REPO

HEADING = "### 1. The cluster section"


def _example() -> str:
    for doc in (REPO / "README.md",):
        text = doc.read_text(encoding="utf-8") if doc.is_file() else ""
        if HEADING in text:
            block = re.search(r"```yaml\n(.*?)```", text.split(HEADING, 1)[1], re.S)
            assert block is not None, f"{doc}: no yaml block under {HEADING!r}"
            return block[1]
    raise AssertionError(f"no document has {HEADING!r}")


def test_the_documented_cluster_section(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("site:\n  name: Campus\n  timezone: Europe/Vienna\n"
                    "  grid: {import_limit_kw: 400, export_limit_kw: 150}\n"
                    "connections: []\ndevices: []\n" + _example(), encoding="utf-8")
    assert autogrid(["check", str(site)]) == 0, capsys.readouterr().out
    out = tmp_path / "member.yaml"
    assert autogrid(["cluster", "etcd-config", "-c", str(site), "--gateway", "gw-main",
                     "--cert-dir", "/etc/etcd/autogrid", "--out", str(out)]) == 0
    conf = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert conf["name"] == "gw-main" and conf["data-dir"] == "/var/lib/etcd/autogrid"
    assert conf["listen-client-urls"] == "https://10.20.0.2:2379"
    assert conf["initial-cluster"].count("=https://") == 3
    assert conf["initial-cluster-token"] == "campus-2026"
    assert conf["peer-transport-security"] == {
        "cert-file": "/etc/etcd/autogrid/gw-main.crt",
        "key-file": "/etc/etcd/autogrid/gw-main.key",
        "trusted-ca-file": "/etc/etcd/autogrid/ca.crt", "client-cert-auth": True}
    certs = tmp_path / "site-ca"
    assert autogrid(["cluster", "certs", "-c", str(site), "--out", str(certs)]) == 0
    assert sorted(p.name for p in certs.iterdir()) == [
        "ca.crt", "ca.key", "gw-b.crt", "gw-b.key", "gw-main.crt", "gw-main.key",
        "gw-south.crt", "gw-south.key"]
