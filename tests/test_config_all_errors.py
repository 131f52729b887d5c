"""`autogrid check` reports schema and cross-reference errors in one run, and YAML syntax
errors in plain words about indentation rather than PyYAML's parser states."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from gateway.config.loader import check_config, run_check
from gateway.yamlsrc import Problem, SourceError, load_yaml_text

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "site_configs" / "demo.yaml"

BASE = """\
site:
  name: Test site
  timezone: Europe/Berlin
gateways:
  - id: gw1
connections:
  - id: bus1
    type: modbus_tcp
    host: 127.0.0.1
    port: 15020
  - id: bus2
    type: modbus_tcp
    host: 127.0.0.2
    port: 15020
devices:
  - id: bess1
    nature: bess
    template: generic_bess
    connection: bus1
  - id: meter1
    nature: meter
    template: meter_3ph
    connection: bus2
    unit_id: 2
  - id: pv1
    nature: pv_inverter
    template: sunspec_inverter
    connection: bus2
    unit_id: 3
historian:
  enabled: false
"""


def write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "site.yaml"
    f.write_text(text, encoding="utf-8")
    return f


def lines_of(problems: list[Problem]) -> list[tuple[int, str]]:
    return [(p.mark.line if p.mark else 0, p.path) for p in problems]


def test_readme_example_prints_both_errors(tmp_path: Path) -> None:
    """The README's check example, run on a copy of the demo with those two mistakes."""
    text = DEMO.read_text(encoding="utf-8")
    assert text.count("port: 15020") == 1 and text.count("template: sunspec_inverter") == 1
    site = write(tmp_path, text.replace("port: 15020", "port: 99999")
                 .replace("template: sunspec_inverter", "template: sunspec_inverer"))
    out = io.StringIO()
    assert run_check(str(site), out) == 1
    got = out.getvalue().replace(str(site), "site.yaml").splitlines()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"\$ autogrid check site\.yaml\n(.*?)```", readme, re.S)
    assert block is not None
    assert got == block.group(1).splitlines()
    assert got[-1] == "site.yaml: 2 errors"


def test_schema_and_cross_reference_errors_together(tmp_path: Path) -> None:
    text = (BASE.replace("    port: 15020\n  - id: bus2", "    port: 0\n  - id: bus2")
                .replace("template: meter_3ph", "template: meter_3phh"))
    got = check_config(write(tmp_path, text))
    assert lines_of(got) == [(10, "connections[0].port"), (22, "devices[1].template")]
    assert "meter_3ph" in got[1].message  # the suggestion
    # bess1 names the connection the schema refused: no "unknown connection 'bus1'"
    assert not any("'bus1'" in p.message for p in got)


def test_dropped_device_keeps_later_indices_and_positions(tmp_path: Path) -> None:
    """A device the schema refuses is set aside; the devices after it keep their own
    index and line in cross-reference errors (and in the text that names another one)."""
    text = (BASE.replace("    nature: meter\n", "    nature: metre\n")
                .replace("  - id: pv1", "  - id: bess1"))
    got = check_config(write(tmp_path, text))
    assert lines_of(got) == [(21, "devices[1].nature"), (25, "devices[2].id")]
    assert "first used at line 16, devices[0]" in got[1].message


def test_cross_checks_need_the_site_section(tmp_path: Path) -> None:
    """Without a valid `site` no cross check can run: the schema errors alone, no crash."""
    text = (BASE.replace("  name: Test site\n", "")
                .replace("template: meter_3ph", "template: meter_3phh"))
    got = check_config(write(tmp_path, text))
    assert lines_of(got) == [(2, "site.name")]


def test_unknown_top_level_key_does_not_hide_cross_errors(tmp_path: Path) -> None:
    text = BASE.replace("template: meter_3ph", "template: meter_3phh") + "historain: {}\n"
    got = check_config(write(tmp_path, text))
    assert lines_of(got) == [(22, "devices[1].template"), (32, "historain")]


CASES = {
    # dedent inside a list item: between the item's keys (4) and its dash (2)
    "devices:\n  - id: a\n    template: x\n   nature: pv\n":
        ("4:4", "line 4 ('nature: pv') is indented 3 spaces, which lines up with no block "
                "above it (line 3 ('template: x') is at 4 spaces; its parent, line 2 "
                "('- id: a'), at 2 spaces): line it up with line 3"),
    "site:\n    name: x\n  timezone: UTC\n":
        ("3:3", "line 3 ('timezone: UTC') is indented 2 spaces, which lines up with no block"),
    "site:\n  name: x\n    timezone: UTC\n":
        ("3:13", "line 3 ('timezone: UTC') is indented 4 spaces, more than line 2 ('name: x', "
                 "2 spaces), but 'name' already has a value"),
    "site:\n  name x\n  timezone: UTC\n":
        ("3:11", "line 2 ('name x') has no ':' after its key"),
    "devices:\n  id: a\n  - id: b\n":
        ("3:3", "line 3 ('- id: b') starts a list item ('- ') at 2 spaces, among the keys of "
                "the block at line 2 ('id: a')"),
    "site:\n  name: \"abc\n  tz: 1\n":
        ("4:1", "the quoted text that starts at line 2, column 9 is never closed"),
}


@pytest.mark.parametrize("text", list(CASES))
def test_yaml_syntax_errors_in_plain_words(text: str) -> None:
    where, words = CASES[text]
    with pytest.raises(SourceError) as info:
        load_yaml_text(text, "s.yaml")
    (p,) = info.value.problems
    assert p.mark is not None and f"{p.mark.line}:{p.mark.col}" == where
    assert p.message.startswith("YAML syntax error: " + words), p.message
    assert "<block" not in p.message and "while parsing" not in p.message


def test_a_broken_templates_section_does_not_make_site_templates_unknown(
        tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "site_meter.yaml").write_text(
        "nature: meter\npoints:\n  p_kw: {address: 0, function: input, type: float32}\n")
    text = (BASE.replace("template: meter_3ph", "template: site_meter")
            + "templates: [{path: models, overide: true}]\n")
    got = check_config(write(tmp_path, text))
    assert lines_of(got) == [(32, "templates[0].overide")]
