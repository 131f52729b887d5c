"""Cross-reference checks of site configs: each mistake is reported at its own position,
with what was found and what was expected, and they are all reported in one pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.loader import check_config, load_config
from gateway.yamlsrc import Problem, SourceError

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
TINY_LOAD = """\
nature: load
points:
  p_kw: {address: 0, function: input, type: float32}
  enabled: {address: 0, function: coil, type: bool, access: rw}
"""
BROKEN = """\
nature: meter
points:
  p_kw: {address: 0, function: input, type: float64}
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

LOAD_DEVICE = """\
  - id: load1
    nature: load
    template: tiny_load
    connection: bus1
    unit_id: 3
"""


@pytest.fixture
def tpl_dir(tmp_path: Path) -> Path:
    d = tmp_path / "templates"
    d.mkdir()
    for name, text in (("tiny_bess", TINY_BESS), ("tiny_meter", TINY_METER),
                       ("tiny_load", TINY_LOAD), ("broken", BROKEN)):
        (d / f"{name}.yaml").write_text(text)
    return d


def problems(tmp_path: Path, tpl_dir: Path, text: str) -> list[Problem]:
    f = tmp_path / "site.yaml"
    f.write_text(text, encoding="utf-8")
    return check_config(f, template_dir=tpl_dir)


def edited(old: str, new: str, base: str = BASE) -> str:
    assert old in base, old
    return base.replace(old, new, 1)


def only(found: list[Problem]) -> Problem:
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def where(p: Problem) -> str:
    assert p.mark is not None, str(p)
    return f"{Path(p.file).name}:{p.mark.line}:{p.mark.col}"


def with_load(text: str = BASE) -> str:
    return text.replace("historian:\n", LOAD_DEVICE + "historian:\n")


def test_base_is_clean(tmp_path: Path, tpl_dir: Path) -> None:
    assert problems(tmp_path, tpl_dir, BASE) == []
    assert problems(tmp_path, tpl_dir, with_load()) == []


def test_unknown_template_suggests_close_name(tmp_path: Path, tpl_dir: Path) -> None:
    p = only(problems(tmp_path, tpl_dir, edited("template: tiny_bess", "template: tiny_bes")))
    assert where(p) == "site.yaml:15:15"
    assert p.path == "devices[0].template"
    assert p.message.startswith("unknown template 'tiny_bes'; did you mean 'tiny_bess'")
    assert "known: broken, tiny_bess, tiny_load, tiny_meter" in p.message


def test_unknown_template_far_from_any_lists_known(tmp_path: Path, tpl_dir: Path) -> None:
    p = only(problems(tmp_path, tpl_dir, edited("template: tiny_bess", "template: sma_x")))
    assert "did you mean" not in p.message
    assert p.message == ("unknown template 'sma_x' (known: broken, tiny_bess, tiny_load, "
                         "tiny_meter)")


def test_built_in_templates_by_default(tmp_path: Path) -> None:
    text = BASE.replace("template: tiny_bess", "template: generic_bes") \
               .replace("template: tiny_meter", "template: meter_3ph")
    f = tmp_path / "site.yaml"
    f.write_text(text, encoding="utf-8")
    p = only(check_config(f))
    assert p.path == "devices[0].template"
    assert p.message.startswith("unknown template 'generic_bes'; did you mean 'generic_bess'")
    assert "sunspec_inverter" in p.message  # the known ones are listed


def test_template_name_cannot_escape_the_directory(tmp_path: Path, tpl_dir: Path) -> None:
    (tmp_path / "evil.yaml").write_text(TINY_BESS)
    p = only(problems(tmp_path, tpl_dir, edited("template: tiny_bess", "template: ../evil")))
    assert p.path == "devices[0].template" and "unknown template '../evil'" in p.message


def test_broken_template_reported_at_device_with_its_own_positions(
        tmp_path: Path, tpl_dir: Path) -> None:
    text = edited("template: tiny_meter", "template: broken")
    text = with_load(text).replace("template: tiny_load", "template: broken") \
                          .replace("nature: load", "nature: meter")
    found = problems(tmp_path, tpl_dir, text)
    assert [(where(p), p.path) for p in found] == [("site.yaml:21:15", "devices[1].template"),
                                                   ("site.yaml:26:15", "devices[2].template")]
    first, second = found
    assert "template 'broken' does not load (1 problem)" in first.message
    assert f"{tpl_dir / 'broken.yaml'}:3:45: points.p_kw.type: " in first.message
    assert "'float64'" in first.message
    assert second.message == "template 'broken' does not load (see devices[1].template)"


def test_nature_must_match_template(tmp_path: Path, tpl_dir: Path) -> None:
    p = only(problems(tmp_path, tpl_dir, edited("nature: meter", "nature: load")))
    assert where(p) == "site.yaml:20:13"
    assert p.path == "devices[1].nature"
    assert p.message == "template 'tiny_meter' describes a meter, but the device says load"


def test_unknown_connection(tmp_path: Path, tpl_dir: Path) -> None:
    text = edited("connection: bus1\n    unit_id: 2", "connection: bus_1\n    unit_id: 2")
    p = only(problems(tmp_path, tpl_dir, text))
    assert where(p) == "site.yaml:22:17"
    assert p.path == "devices[1].connection"
    assert p.message == "unknown connection 'bus_1'; did you mean 'bus1'? (defined: bus1)"


def test_duplicate_device_id(tmp_path: Path, tpl_dir: Path) -> None:
    p = only(problems(tmp_path, tpl_dir, edited("id: meter1", "id: bess1")))
    assert where(p) == "site.yaml:19:9"
    assert p.path == "devices[1].id"
    assert p.message == "duplicate device id 'bess1' (first used at line 13, devices[0])"


def test_duplicate_connection_and_gateway_ids(tmp_path: Path, tpl_dir: Path) -> None:
    text = edited("  - id: gw1\n", "  - id: gw1\n  - id: gw1\n")
    text = edited("devices:\n", "  - {id: bus1, type: modbus_tcp, host: 10.0.0.9}\ndevices:\n",
                  text)
    found = problems(tmp_path, tpl_dir, text)
    dupes = [(where(p), p.path, p.message) for p in found if "duplicate" in p.message]
    assert dupes == [
        ("site.yaml:7:9", "gateways[1].id", "duplicate gateway id 'gw1' (first used at line 6, "
                                            "gateways[0])"),
        ("site.yaml:13:10", "connections[1].id", "duplicate connection id 'bus1' (first used at "
                                                "line 9, connections[0])"),
    ]


def test_unit_id_clash_on_one_connection(tmp_path: Path, tpl_dir: Path) -> None:
    p = only(problems(tmp_path, tpl_dir, edited("unit_id: 2", "unit_id: 1")))
    assert where(p) == "site.yaml:23:14"
    assert p.path == "devices[1].unit_id"
    assert "unit id 1 on connection 'bus1' is already used by device 'bess1'" in p.message


def test_unit_id_clash_with_the_default(tmp_path: Path, tpl_dir: Path) -> None:
    p = only(problems(tmp_path, tpl_dir, edited("    unit_id: 2\n", "")))
    assert where(p) == "site.yaml:19:5"  # no unit_id written: the device's mapping
    assert "unit id 1 (the default) on connection 'bus1'" in p.message


def test_same_unit_id_on_different_connections_is_fine(tmp_path: Path, tpl_dir: Path) -> None:
    text = edited("devices:\n", "  - {id: bus2, type: modbus_tcp, host: 10.0.0.9}\ndevices:\n")
    text = text.replace("connection: bus1\n    unit_id: 2", "connection: bus2\n    unit_id: 1")
    assert problems(tmp_path, tpl_dir, text) == []


def test_disabled_device_does_not_clash(tmp_path: Path, tpl_dir: Path) -> None:
    text = edited("unit_id: 2", "unit_id: 1\n    enabled: false")
    assert problems(tmp_path, tpl_dir, text) == []


def test_point_not_in_template(tmp_path: Path, tpl_dir: Path) -> None:
    text = edited("    unit_id: 2\n", "    unit_id: 2\n    points: [p_kw, f_hz, v_v, p_kw]\n")
    found = problems(tmp_path, tpl_dir, text)
    assert [(where(p), p.path) for p in found] == [("site.yaml:24:26", "devices[1].points[2]"),
                                                   ("site.yaml:24:31", "devices[1].points[3]")]
    assert found[0].message == ("unknown point 'v_v' in template 'tiny_meter' (its points: "
                                "f_hz, p_kw)")
    assert found[1].message == "point 'p_kw' is listed twice"


def test_safe_setpoint_on_read_only_point(tmp_path: Path, tpl_dir: Path) -> None:
    p = only(problems(tmp_path, tpl_dir, edited("{p_set_kw: 0}", "{p_set_kw: 0, soc_pct: 50}")))
    assert where(p) == "site.yaml:18:35"  # the key
    assert p.path == "devices[0].safe_setpoints.soc_pct"
    assert p.message == ("point 'soc_pct' of template 'tiny_bess' is read-only; a safe "
                         "setpoint must be writable (writable: p_set_kw)")


def test_safe_setpoint_unknown_and_wrong_kind(tmp_path: Path, tpl_dir: Path) -> None:
    text = edited("{p_set_kw: 0}", "{p_set_kw: true, p_sett_kw: 0}")
    text = with_load(text).replace("    unit_id: 3\n", "    unit_id: 3\n"
                                                       "    safe_setpoints: {enabled: 1}\n")
    found = problems(tmp_path, tpl_dir, text)
    got = [(where(p), p.path, p.message) for p in found]
    assert got == [
        ("site.yaml:18:32", "devices[0].safe_setpoints.p_set_kw",
         "'p_set_kw' is a number in kW: expected a number (found true)"),
        ("site.yaml:18:38", "devices[0].safe_setpoints.p_sett_kw",
         "unknown point 'p_sett_kw' in template 'tiny_bess'; did you mean 'p_set_kw'? "
         "(writable points: p_set_kw)"),
        ("site.yaml:29:31", "devices[2].safe_setpoints.enabled",
         "'enabled' is on/off: expected true or false (found 1)"),
    ]


def test_gateway_required_with_two_gateways(tmp_path: Path, tpl_dir: Path) -> None:
    text = edited("  - id: gw1\n", "  - id: gw1\n  - id: gw2\n")
    text = text.replace("    unit_id: 1\n", "    unit_id: 1\n    gateway: gw3\n")
    found = problems(tmp_path, tpl_dir, text)
    assert [(where(p), p.path, p.message) for p in found] == [
        ("site.yaml:19:14", "devices[0].gateway",
         "unknown gateway 'gw3'; did you mean 'gw2' or 'gw1'? (defined: gw1, gw2)"),
        ("site.yaml:21:5", "devices[1].gateway",
         "required: this site has 2 gateways (gw1, gw2); say which one polls 'meter1'"),
    ]


def test_timezone_must_exist(tmp_path: Path, tpl_dir: Path) -> None:
    p = only(problems(tmp_path, tpl_dir, edited("Europe/Berlin", "Europe/Berln")))
    assert where(p) == "site.yaml:3:13"
    assert p.path == "site.timezone"
    assert "unknown time zone 'Europe/Berln'; did you mean 'Europe/Berlin'" in p.message
    p = only(problems(tmp_path, tpl_dir, edited("Europe/Berlin", "CET+1")))
    assert "unknown time zone 'CET+1'" in p.message


def test_grid_limits_sane(tmp_path: Path, tpl_dir: Path) -> None:
    text = edited("{import_limit_kw: 100, export_limit_kw: 50}",
                  "{import_limit_kw: 0, export_limit_kw: 0, nominal_v: 23000}")
    found = problems(tmp_path, tpl_dir, text)
    assert [(where(p), p.path) for p in found] == [
        ("site.yaml:4:27", "site.grid.import_limit_kw"), ("site.yaml:4:61", "site.grid.nominal_v")]
    assert "shed every load" in found[0].message
    assert "between 100 and 1000 V (found 23000)" in found[1].message
    neg = only(problems(tmp_path, tpl_dir, edited("export_limit_kw: 50", "export_limit_kw: -5")))
    assert neg.path == "site.grid.export_limit_kw" and "greater than or equal to 0" in neg.message


def test_serial_and_network_connections_not_mixed_up(tmp_path: Path, tpl_dir: Path) -> None:
    text = edited("devices:\n", "  - {id: rs, type: modbus_serial, port: 192.168.1.50}\n"
                                "  - {id: t2, type: modbus_tcp, host: /dev/ttyUSB0}\n"
                                "  - {id: t3, type: modbus_tcp, host: '10.0.0.5:502'}\n"
                                "devices:\n")
    found = problems(tmp_path, tpl_dir, text)
    got = [(where(p), p.path) for p in found]
    assert got == [("site.yaml:12:41", "connections[1].port"),
                   ("site.yaml:13:38", "connections[2].host"),
                   ("site.yaml:14:38", "connections[3].host")]
    assert "looks like a network host" in found[0].message
    assert "use type 'modbus_serial' with 'port: /dev/ttyUSB0'" in found[1].message
    assert "put the port number in 'port'" in found[2].message


def test_serial_options_rejected_on_tcp(tmp_path: Path, tpl_dir: Path) -> None:
    p = only(problems(tmp_path, tpl_dir, edited("    port: 15020\n",
                                                "    port: 15020\n    baudrate: 9600\n")))
    assert where(p) == "site.yaml:12:5"
    assert p.path == "connections[0].baudrate" and "unknown key" in p.message


def test_serial_unit_zero_and_one_box(tmp_path: Path, tpl_dir: Path) -> None:
    text = edited("  - id: gw1\n", "  - id: gw1\n  - id: gw2\n")
    text = edited("devices:\n", "  - {id: rs, type: modbus_serial, port: /dev/ttyUSB0}\n"
                                "devices:\n", text)
    text = text.replace("    connection: bus1\n    unit_id: 1\n",
                        "    connection: rs\n    unit_id: 0\n    gateway: gw1\n")
    text = text.replace("    connection: bus1\n    unit_id: 2\n",
                        "    connection: rs\n    unit_id: 2\n    gateway: gw2\n")
    found = problems(tmp_path, tpl_dir, text)
    assert [(where(p), p.path) for p in found] == [("site.yaml:19:14", "devices[0].unit_id"),
                                                   ("site.yaml:27:14", "devices[1].gateway")]
    assert "broadcast address" in found[0].message
    assert "serial connection 'rs' is wired to one box" in found[1].message


def test_one_connection_per_endpoint(tmp_path: Path, tpl_dir: Path) -> None:
    text = edited("devices:\n", "  - {id: bus2, type: modbus_tcp, host: 127.0.0.1, "
                                "port: 15020}\ndevices:\n")
    p = only(problems(tmp_path, tpl_dir, text))
    assert where(p) == "site.yaml:12:5"
    assert p.message.startswith("127.0.0.1:15020 is already connection 'bus1'")


def test_historian_directory_must_exist(tmp_path: Path, tpl_dir: Path) -> None:
    missing = tmp_path / "no" / "such" / "h.sqlite"
    p = only(problems(tmp_path, tpl_dir, edited("path: history.sqlite", f"path: {missing}")))
    assert where(p) == "site.yaml:25:9"
    assert p.path == "historian.path"
    assert p.message.startswith(f"directory '{missing.parent}' does not exist")
    ok = edited("path: history.sqlite", f"path: {tmp_path / 'h.sqlite'}")
    assert problems(tmp_path, tpl_dir, ok) == []
    off = edited("path: history.sqlite", f"path: {missing}\n  enabled: false")
    assert problems(tmp_path, tpl_dir, off) == []


def test_ratings_and_max_age(tmp_path: Path, tpl_dir: Path) -> None:
    text = edited("    unit_id: 2\n", "    unit_id: 2\n    max_age_s: 0.5\n"
                                       "    ratings: {kwp: 10}\n")
    found = problems(tmp_path, tpl_dir, text)
    assert [(where(p), p.path) for p in found] == [("site.yaml:24:16", "devices[1].max_age_s"),
                                                   ("site.yaml:25:15", "devices[1].ratings.kwp")]
    assert "every reading is stale" in found[0].message
    assert found[1].message == "'kwp' applies to pv_inverter devices, not to a meter"


def test_every_cross_reference_problem_at_once(tmp_path: Path, tpl_dir: Path) -> None:
    text = (BASE.replace("template: tiny_bess", "template: tiny_bes")
                .replace("unit_id: 2", "unit_id: 1")
                .replace("id: meter1", "id: bess1")
                .replace("path: history.sqlite", f"path: {tmp_path}/x/h.sqlite"))
    with pytest.raises(SourceError) as info:
        load_config(_write(tmp_path, text),
                    template_dir=tpl_dir)
    got = [p.path for p in info.value.problems]
    assert got == ["devices[0].template", "devices[1].id", "devices[1].unit_id",
                   "historian.path"]


def _write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "site.yaml"
    f.write_text(text, encoding="utf-8")
    return f


def test_pymodbus_client_cannot_pipeline(tmp_path: Path, tpl_dir: Path) -> None:
    p = only(problems(tmp_path, tpl_dir, edited(
        "    port: 15020\n", "    port: 15020\n    client: pymodbus\n    max_in_flight: 4\n")))
    assert where(p) == "site.yaml:13:20"
    assert p.path == "connections[0].max_in_flight"
    assert "needs the lean client" in p.message
    assert problems(tmp_path, tpl_dir, edited("    port: 15020\n",
                                              "    port: 15020\n    client: pymodbus\n")) == []
