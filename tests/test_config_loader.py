"""Site config loading: YAML and schema errors come back positioned, all at once, and the
`autogrid check` helper prints them without a traceback."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config.loader import (
    ConfigUnreadable,
    LoadedConfig,
    check_config,
    load_config,
    run_check,
)
from gateway.yamlsrc import Problem, SourceError

REPO = Path(__file__).resolve().parent.parent

TINY_BESS = """\
nature: bess
points:
  soc_pct: {address: 0, function: input, type: uint16, scale: 0.1}
  p_kw: {address: 1, function: input, type: int16, scale: 0.1}
  p_set_kw: {address: 100, type: int16, scale: 0.1, access: rw}
"""
TINY_METER = """\
nature: meter
points:
  p_kw: {address: 0, function: input, type: float32}
  f_hz: {address: 2, function: input, type: uint16, scale: 0.01}
"""

BASE = """\
site:
  name: Test site
  timezone: Europe/Berlin
  grid: {import_limit_kw: 100, export_limit_kw: 50}
gateways:
  - id: gw1
connections:
  - id: bus1
    type: modbus_tcp
    host: 127.0.0.1
    port: 15020
devices:
  - id: bess1
    nature: bess
    template: tiny_bess
    connection: bus1
    unit_id: 1
    safe_setpoints: {p_set_kw: 0}
  - id: meter1
    nature: meter
    template: tiny_meter
    connection: bus1
    unit_id: 2
historian:
  path: history.sqlite
"""


@pytest.fixture
def tpl_dir(tmp_path: Path) -> Path:
    d = tmp_path / "templates"
    d.mkdir()
    (d / "tiny_bess.yaml").write_text(TINY_BESS)
    (d / "tiny_meter.yaml").write_text(TINY_METER)
    return d


def write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "site.yaml"
    f.write_text(text, encoding="utf-8")
    return f


def edited(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


def where(p: Problem) -> str:
    assert p.mark is not None, str(p)
    return f"{Path(p.file).name}:{p.mark.line}:{p.mark.col}"


def test_base_config_loads(tmp_path: Path, tpl_dir: Path) -> None:
    loaded = load_config(write(tmp_path, BASE), template_dir=tpl_dir)
    assert isinstance(loaded, LoadedConfig)
    assert loaded.path == tmp_path / "site.yaml"
    assert [d.id for d in loaded.config.devices] == ["bess1", "meter1"]
    assert loaded.config.site.grid.export_limit_kw == 50
    assert loaded.source.mark(("devices", 1, "template")).line == 21  # type: ignore[union-attr]
    assert loaded.template_of("bess1").nature == "bess"
    assert sorted(loaded.templates) == ["tiny_bess", "tiny_meter"]
    assert check_config(tmp_path / "site.yaml", template_dir=tpl_dir) == []


def test_yaml_syntax_error(tmp_path: Path, tpl_dir: Path) -> None:
    p = only(check_config(write(tmp_path, edited("name: Test site", "name: [Test site")),
                          template_dir=tpl_dir))
    assert where(p) == "site.yaml:3:11"
    assert p.path == ""
    assert "YAML syntax error" in p.message and "flow sequence" in p.message


def test_tab_indentation(tmp_path: Path, tpl_dir: Path) -> None:
    p = only(check_config(write(tmp_path, edited("  timezone:", "\ttimezone:")),
                          template_dir=tpl_dir))
    assert where(p) == "site.yaml:3:1"
    assert "tab" in p.message and "spaces" in p.message


def test_duplicate_key(tmp_path: Path, tpl_dir: Path) -> None:
    text = edited("  timezone: Europe/Berlin\n", "  timezone: Europe/Berlin\n  name: Again\n")
    p = only(check_config(write(tmp_path, text), template_dir=tpl_dir))
    assert where(p) == "site.yaml:4:3"
    assert p.path == "site"
    assert p.message == "duplicate key 'name'"


def test_unknown_top_level_key(tmp_path: Path, tpl_dir: Path) -> None:
    p = only(check_config(write(tmp_path, BASE + "historain:\n  path: x.sqlite\n"),
                          template_dir=tpl_dir))
    assert where(p) == "site.yaml:26:1"
    assert p.path == "historain"
    assert "unknown key" in p.message


def test_unknown_nested_key(tmp_path: Path, tpl_dir: Path) -> None:
    p = only(check_config(write(tmp_path, edited("    unit_id: 2", "    unitid: 2")),
                          template_dir=tpl_dir))
    assert where(p) == "site.yaml:23:5"
    assert p.path == "devices[1].unitid"
    assert "unknown key" in p.message


def test_wrong_type(tmp_path: Path, tpl_dir: Path) -> None:
    p = only(check_config(write(tmp_path, edited("port: 15020", "port: fifteen")),
                          template_dir=tpl_dir))
    assert where(p) == "site.yaml:11:11"
    assert p.path == "connections[0].port"
    assert "valid integer" in p.message and "'fifteen'" in p.message


def test_port_out_of_range(tmp_path: Path, tpl_dir: Path) -> None:
    p = only(check_config(write(tmp_path, edited("port: 15020", "port: 70000")),
                          template_dir=tpl_dir))
    assert where(p) == "site.yaml:11:11"
    assert p.path == "connections[0].port"
    assert "65535" in p.message and "70000" in p.message


def test_unknown_connection_type_lists_types(tmp_path: Path, tpl_dir: Path) -> None:
    p = only(check_config(write(tmp_path, edited("type: modbus_tcp", "type: modbus_udp")),
                          template_dir=tpl_dir))
    assert where(p) == "site.yaml:9:11"
    assert p.path == "connections[0].type"
    assert "modbus_udp" in p.message and "modbus_rtu_over_tcp" in p.message
    p = only(check_config(write(tmp_path, edited("    type: modbus_tcp\n", "")),
                          template_dir=tpl_dir))
    assert where(p) == "site.yaml:8:5"  # the connection's mapping, where the key belongs
    assert p.path == "connections[0].type"
    assert "required field is missing" in p.message and "'modbus_serial'" in p.message


def test_unknown_nature_lists_valid_ones(tmp_path: Path, tpl_dir: Path) -> None:
    p = only(check_config(write(tmp_path, edited("nature: bess", "nature: battery")),
                          template_dir=tpl_dir))
    assert where(p) == "site.yaml:14:13"
    assert p.path == "devices[0].nature"
    for nature in ("pv_inverter", "bess", "evse", "wind_turbine", "'battery'"):
        assert nature in p.message


def test_missing_required_field(tmp_path: Path, tpl_dir: Path) -> None:
    text = BASE.replace("    connection: bus1\n    unit_id: 2\n", "    unit_id: 2\n")
    p = only(check_config(write(tmp_path, text), template_dir=tpl_dir))
    assert where(p) == "site.yaml:19:5"  # the device's mapping, where the key belongs
    assert p.path == "devices[1].connection"
    assert p.message == "required field is missing"


def test_bad_id_characters(tmp_path: Path, tpl_dir: Path) -> None:
    p = only(check_config(write(tmp_path, edited("id: bess1", "id: 1st battery")),
                          template_dir=tpl_dir))
    assert where(p) == "site.yaml:13:9"
    assert p.path == "devices[0].id"
    assert "pattern" in p.message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(tmp_path: Path, tpl_dir: Path, text: str) -> None:
    p = only(check_config(write(tmp_path, text), template_dir=tpl_dir))
    assert where(p) == "site.yaml:1:1"
    assert "empty" in p.message and "'site'" in p.message


def test_top_level_list(tmp_path: Path, tpl_dir: Path) -> None:
    p = only(check_config(write(tmp_path, "- site\n- gateways\n"), template_dir=tpl_dir))
    assert where(p) == "site.yaml:1:1"
    assert "expected a mapping" in p.message and "list" in p.message


def test_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigUnreadable) as info:
        load_config(missing)
    assert str(info.value) == f"{missing}: file not found"
    assert isinstance(info.value, SourceError)
    assert [p.message for p in check_config(missing)] == ["file not found"]


def test_schema_errors_in_file_order(tmp_path: Path, tpl_dir: Path) -> None:
    text = "devices: 5\nconnections: 7\nsite: {name: x}\ngateways: []\n"
    found = check_config(write(tmp_path, text), template_dir=tpl_dir)
    assert [(where(p), p.path) for p in found] == [
        ("site.yaml:1:10", "devices"), ("site.yaml:2:14", "connections"),
        ("site.yaml:4:11", "gateways")]
    assert "at least 1 item" in found[2].message


def test_schema_errors_all_reported_at_once(tmp_path: Path, tpl_dir: Path) -> None:
    text = (BASE.replace("port: 15020", "port: 0")
                .replace("nature: meter", "nature: metre")
                .replace("  path: history.sqlite", "  path: history.sqlite\n  colour: red"))
    with pytest.raises(SourceError) as info:
        load_config(write(tmp_path, text), template_dir=tpl_dir)
    got = [(where(p), p.path) for p in info.value.problems]
    assert got == [("site.yaml:11:11", "connections[0].port"),
                   ("site.yaml:20:13", "devices[1].nature"),
                   ("site.yaml:26:3", "historian.colour")]
    lines = str(info.value).splitlines()
    assert len(lines) == 3 and lines[0].startswith(f"{tmp_path / 'site.yaml'}:11:11: ")


def test_cross_reference_errors_all_reported_at_once(tmp_path: Path, tpl_dir: Path) -> None:
    text = (BASE.replace("template: tiny_meter", "template: tiny_metre")
                .replace("connection: bus1\n    unit_id: 1", "connection: bus2\n    unit_id: 1")
                .replace("timezone: Europe/Berlin", "timezone: Europe/Berln"))
    with pytest.raises(SourceError) as info:
        load_config(write(tmp_path, text), template_dir=tpl_dir)
    got = [(where(p), p.path) for p in info.value.problems]
    assert got == [("site.yaml:3:13", "site.timezone"),
                   ("site.yaml:16:17", "devices[0].connection"),
                   ("site.yaml:21:15", "devices[1].template")]


def run(path: Path | str, tpl_dir: Path | None = None) -> tuple[int, str]:
    out = io.StringIO()
    code = run_check(str(path), out, template_dir=tpl_dir)
    return code, out.getvalue()


def test_run_check_ok(tmp_path: Path, tpl_dir: Path) -> None:
    code, text = run(write(tmp_path, BASE), tpl_dir)
    assert code == 0
    assert text == f"{tmp_path / 'site.yaml'}: OK — 2 devices on 1 connection, 1 gateway\n"


def test_run_check_errors(tmp_path: Path, tpl_dir: Path) -> None:
    text = BASE.replace("port: 15020", "port: 0").replace("unit_id: 2", "unit_id: 999")
    code, out = run(write(tmp_path, text), tpl_dir)
    name = tmp_path / "site.yaml"
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith(f"{name}:11:11: connections[0].port: ")
    assert lines[1].startswith(f"{name}:23:14: devices[1].unit_id: ")
    assert lines[2] == f"{name}: 2 errors"
    assert len(lines) == 3
    assert "Traceback" not in out


def test_run_check_unreadable(tmp_path: Path) -> None:
    code, out = run(tmp_path / "nope.yaml")
    assert (code, out) == (2, f"{tmp_path / 'nope.yaml'}: file not found\n")
    code, out = run(tmp_path)  # a directory
    assert code == 2 and "directory" in out
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"site:\n  name: K\xf6ln\n")
    code, out = run(bad)
    assert code == 2 and "UTF-8" in out


def test_no_traceback_in_a_real_process(tmp_path: Path, tpl_dir: Path) -> None:
    """What a site engineer sees: problems on stdout, nothing on stderr, exit code 1."""
    bad = write(tmp_path, BASE.replace("  timezone:", "\ttimezone:"))
    code = ("import sys; from pathlib import Path; from gateway.config.loader import run_check; "
            "sys.exit(run_check(sys.argv[1], sys.stdout, template_dir=Path(sys.argv[2])))")
    for path, want in ((bad, 1), (tmp_path / "missing.yaml", 2)):
        proc = subprocess.run([sys.executable, "-c", code, str(path), str(tpl_dir)],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == want, proc.stderr
        assert proc.stderr == ""
        assert "Traceback" not in proc.stdout
        assert proc.stdout.startswith(str(path))


def test_autogrid_check_command(tmp_path: Path) -> None:
    """`autogrid check` end to end: the shipped demo is OK, a broken copy is not."""
    demo = REPO / "site_configs" / "demo.yaml"
    broken = tmp_path / "broken.yaml"
    broken.write_text(demo.read_text(encoding="utf-8").replace("unit_id: 5", "unit_id: 4"),
                      encoding="utf-8")
    code = "import sys; from gateway.cli import main; sys.exit(main(['check', sys.argv[1]]))"
    ok = subprocess.run([sys.executable, "-c", code, str(demo)], cwd=REPO,
                        capture_output=True, text=True, timeout=60)
    assert (ok.returncode, ok.stderr) == (0, "")
    devices = len(load_config(demo).config.devices)
    assert ok.stdout == f"{demo}: OK — {devices} devices on 1 connection, 1 gateway\n"
    bad = subprocess.run([sys.executable, "-c", code, str(broken)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "Traceback" not in bad.stdout + bad.stderr
    first = bad.stdout.splitlines()[0]
    assert first.startswith(f"{broken}:") and ": devices[4].unit_id: unit id 4 on connection " \
        "'lan' is already used by device 'ev_bay1'" in first
