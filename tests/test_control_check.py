"""`autogrid check` reports the control section's device references at the offending field
(before, they were only found when the daemon started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from tests.test_config_checks import BASE, only, problems, tpl_dir, where

__all__ = ["tpl_dir"]  # the fixture, used by name
REPO = Path(__file__).resolve().parent.parent

CONTROL = """\
control:
  emergency:
    pcc_breaker: meter1
    estop_open_breakers: [pcc, bess1]
  protection:
    critical: [meter1, ghost]
"""


def test_control_references_are_reported_at_their_fields(tmp_path: Path, tpl_dir: Path
                                                          ) -> None:
    found = problems(tmp_path, tpl_dir, BASE + CONTROL)
    lines = len(BASE.splitlines())
    got = [(where(p), p.path, p.message) for p in found]
    assert got == [
        (f"site.yaml:{lines + 3}:18", "control.emergency.pcc_breaker",
         "'meter1' is not a breaker of this site"),
        (f"site.yaml:{lines + 4}:27", "control.emergency.estop_open_breakers[0]",
         "no device 'pcc'"),
        (f"site.yaml:{lines + 4}:32", "control.emergency.estop_open_breakers[1]",
         "'bess1' is not a breaker of this site"),
        (f"site.yaml:{lines + 6}:24", "control.protection.critical[1]", "no device 'ghost'"),
    ]
    assert problems(tmp_path, tpl_dir, BASE + "control: {}\n") == []


def test_autogrid_check_prints_them_with_positions(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    demo = (REPO / "site_configs" / "demo.yaml").read_text(encoding="utf-8")
    assert "control:\n  cycle_s: 1.0\n" in demo
    text = demo.replace("control:\n  cycle_s: 1.0\n",
                        "control:\n  cycle_s: 1.0\n  protection:\n    critical: [ghost]\n")
    line = text.splitlines().index("    critical: [ghost]") + 1
    f = tmp_path / "site.yaml"
    f.write_text(text, encoding="utf-8")
    code = main(["check", str(f)])
    out = capsys.readouterr()
    assert code == 1
    assert f"site.yaml:{line}:16: control.protection.critical[0]: no device 'ghost'" \
        in out.out + out.err


def test_a_bms_link_to_a_device_that_is_not_a_battery_is_reported_at_its_field(
        tmp_path: Path, tpl_dir: Path) -> None:
    text = BASE + "control:\n  protection:\n    bms_guards:\n      meter1: ghost\n"
    found = problems(tmp_path, tpl_dir, text)
    lines = len(BASE.splitlines())
    got = [(where(p), p.path, p.message) for p in found]
    assert got == [
        (f"site.yaml:{lines + 4}:15", "control.protection.bms_guards.meter1",
         "'meter1' is not a bms of this site"),
        (f"site.yaml:{lines + 4}:15", "control.protection.bms_guards.meter1",
         "no device 'ghost'")]


SECOND_METER = """\
  - id: meter2
    nature: meter
    template: tiny_meter
    connection: bus1
    unit_id: 3
"""


def with_second_meter(text: str = BASE) -> str:
    return text.replace("historian:\n", SECOND_METER + "historian:\n")


def test_control_that_cannot_see_the_grid_meter_is_refused_at_the_control_key(
        tmp_path: Path, tpl_dir: Path) -> None:
    text = with_second_meter() + "control:\n  cycle_s: 1.0\n"
    line = text.splitlines().index("control:") + 1
    found = problems(tmp_path, tpl_dir, text)
    assert [(where(p), p.path) for p in found] == [(f"site.yaml:{line}:1", "control")]
    msg = found[0].message
    assert "2 meters (meter1, meter2) and none is marked `role: grid`" in msg
    assert "grid_limits, peak_shaving, self_consumption do nothing" in msg
    assert msg.endswith("mark the PCC meter with `role: grid`")
    # the fix the message asks for makes the file pass
    fixed = text.replace("    template: tiny_meter\n    connection: bus1\n    unit_id: 2\n",
                         "    template: tiny_meter\n    connection: bus1\n    unit_id: 2\n"
                         "    role: grid\n")
    assert fixed != text
    assert problems(tmp_path, tpl_dir, fixed) == []


def test_no_meter_at_all_is_refused_while_grid_strategies_are_on(tmp_path: Path,
                                                                 tpl_dir: Path) -> None:
    start = BASE.index("  - id: meter1\n")
    end = BASE.index("historian:\n")
    no_meter = BASE[:start] + BASE[end:] + "control: {}\n"
    p = only(problems(tmp_path, tpl_dir, no_meter))
    assert p.path == "control" and "the site has no meter" in p.message
    assert "add a meter at the grid connection (PCC) with `role: grid`" in p.message
    # a lone meter marked as a sub-meter is no grid meter either
    sub = BASE.replace("    unit_id: 2\n", "    unit_id: 2\n    role: sub\n") + "control: {}\n"
    p = only(problems(tmp_path, tpl_dir, sub))
    assert "the only meter 'meter1' is marked `role: sub`" in p.message


def test_monitor_only_control_without_a_grid_meter_is_a_printed_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (REPO / "site_configs" / "demo.yaml").read_text(encoding="utf-8")
    old = "    role: grid "
    assert text.count(old) == 1
    text = text.replace(old, "    role: sub  ")
    f = tmp_path / "site.yaml"
    f.write_text(text.replace("control:\n  cycle_s: 1.0\n", "control:\n  controller: false\n"),
                 encoding="utf-8")
    line = text.splitlines().index("control:") + 1
    assert main(["check", str(f)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{f}:{line}:1: warning: control: control cannot see the grid "
                             f"connection: the only meter 'grid_meter' is marked `role: sub`")
    assert out[1].startswith(f"{f}: OK — ") and out[1].endswith(", 1 warning")
    # the same section with the controller on steers by grid power: an error
    f.write_text(text, encoding="utf-8")
    assert main(["check", str(f)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{f}:{line}:1: control: control cannot see the grid connection")
