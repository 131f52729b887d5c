"""`autogrid check` reports the control section's device references at the offending field
(before, they were only found when the daemon started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from tests.test_config_checks import BASE, problems, tpl_dir, where

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
