"""The ``cluster:`` section and devices' ``standby_gateways`` as `autogrid check` sees them:
each mistake at its own line and field, all in one run, and a plaintext etcd cluster
refused unless the config says so."""

from __future__ import annotations

from pathlib import Path

from gateway.config.loader import check_config, load_config

BASE = """\
site: {name: Campus, timezone: Europe/Vienna}
gateways: [{id: gw-a}, {id: gw-b}, {id: gw-c}]
connections: [{id: lan, type: modbus_tcp, host: 127.0.0.1, port: 15020}]
devices:
  - {id: meter1, nature: meter, template: meter_3ph, connection: lan, gateway: gw-a,
     standby_gateways: [gw-b]}
"""

MEMBERS = """\
  members:
    - {gateway: gw-a, client_url: https://127.0.0.1:23790, peer_url: https://127.0.0.1:23800}
    - {gateway: gw-b, client_url: https://127.0.0.1:23791, peer_url: https://127.0.0.1:23801}
    - {gateway: gw-c, client_url: https://127.0.0.1:23792, peer_url: https://127.0.0.1:23802}
"""

TLS = """\
  tls: {ca: /etc/autogrid/cluster/ca.crt, cert: "/etc/autogrid/cluster/{gateway}.crt",
        key: "/etc/autogrid/cluster/{gateway}.key"}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


def _lines(tmp_path: Path, text: str) -> list[str]:
    return [str(p) for p in check_config(_write(tmp_path, text))]


def test_a_valid_etcd_cluster_loads_with_tls_paths_per_gateway(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE + "cluster:\n  backend: etcd\n  lease_ttl_s: 3\n"
                  + MEMBERS + TLS)
    assert check_config(path) == []
    cfg = load_config(path).config
    assert cfg.cluster is not None and cfg.cluster.backend == "etcd"
    assert cfg.cluster.lease_ttl_s == 3
    assert cfg.cluster.tls is not None
    ca, cert, key = cfg.cluster.tls.for_gateway("gw-b")
    assert (str(ca), str(cert), str(key)) == ("/etc/autogrid/cluster/ca.crt",
                                              "/etc/autogrid/cluster/gw-b.crt",
                                              "/etc/autogrid/cluster/gw-b.key")
    member = cfg.cluster.member("gw-c")
    assert member is not None and member.client_url.endswith(":23792")
    assert cfg.devices[0].standby_gateways == ["gw-b"]


def test_no_section_is_standalone_and_standby_needs_a_cluster(tmp_path: Path) -> None:
    lines = _lines(tmp_path, BASE)
    assert len(lines) == 1
    assert "site.yaml:6:" in lines[0]
    assert "devices[0].standby_gateways" in lines[0]
    assert "need a cluster" in lines[0]


def test_plaintext_is_refused_unless_said(tmp_path: Path) -> None:
    plain = MEMBERS.replace("https://", "http://")
    lines = _lines(tmp_path, BASE + "cluster:\n  backend: etcd\n" + plain)
    assert len(lines) == 1 and "site.yaml:8:" in lines[0]
    assert "plaintext cluster (no tls: section) is refused" in lines[0]
    assert "allow_plaintext: true" in lines[0]
    # TLS given, but one member's peer URL is plain http: named.
    mixed = MEMBERS.replace("http://127.0.0.1:23801", "https://x").replace(
        "https://127.0.0.1:23801", "http://127.0.0.1:23801")
    lines = _lines(tmp_path, BASE + "cluster:\n  backend: etcd\n" + mixed + TLS)
    assert len(lines) == 1 and "http:// URLs for gw-b" in lines[0]
    ok = BASE + "cluster:\n  backend: etcd\n  allow_plaintext: true\n" + plain
    assert _lines(tmp_path, ok) == []


def test_every_reference_mistake_at_its_field_in_one_run(tmp_path: Path) -> None:
    text = BASE.replace("standby_gateways: [gw-b]", "standby_gateways: [gw-a, gw-x]") + (
        "cluster:\n  backend: etcd\n  allow_plaintext: true\n  members:\n"
        "    - {gateway: gw-a, client_url: http://127.0.0.1:23790, peer_url: http://127.0.0.1:23800}\n"
        "    - {gateway: gw-q, client_url: http://127.0.0.1:23790, peer_url: http://127.0.0.1:23801}\n"
        "    - {gateway: gw-a, client_url: http://127.0.0.1:23792, peer_url: http://127.0.0.1:23802}\n")
    lines = _lines(tmp_path, text)
    joined = "\n".join(lines)
    assert "devices[0].standby_gateways[0]: 'gw-a' owns meter1" in joined
    assert "devices[0].standby_gateways[1]: unknown gateway 'gw-x'" in joined
    assert "cluster.members[1].gateway: unknown gateway 'gw-q'" in joined
    assert "cluster.members[1].client_url: 'http://127.0.0.1:23790' is already the " \
           "client_url of gw-a" in joined
    assert "cluster.members[2].gateway: gateway 'gw-a' has a member already" in joined
    assert "no etcd member for gateway(s) gw-b, gw-c" in joined
    assert all(line.startswith(str(tmp_path / "site.yaml") + ":") for line in lines)


def test_bad_values_are_positioned_errors(tmp_path: Path) -> None:
    text = BASE + ("cluster:\n  backend: etcd\n  allow_plaintext: true\n  lease_ttl_s: 0.2\n"
                   "  prefix: autogrid/\n  members:\n"
                   "    - {gateway: gw-a, client_url: 127.0.0.1:2379, peer_url: http://h:1}\n")
    joined = "\n".join(_lines(tmp_path, text))
    assert "cluster.lease_ttl_s" in joined
    assert "cluster.prefix" in joined and "is not a key prefix" in joined
    assert "cluster.members[0].client_url" in joined and "is not a URL" in joined
