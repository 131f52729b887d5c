"""A reload says which changed sections it could not apply (they need a restart)."""

from __future__ import annotations

from pathlib import Path

from gateway.config.loader import load_config
from gateway.service.reload import plan

SITE = Path(__file__).resolve().parent.parent / "site_configs" / "demo.yaml"


def test_a_changed_control_section_is_reported_as_needing_a_restart(tmp_path: Path) -> None:
    text = SITE.read_text()
    assert "cycle_s:" in text
    changed = tmp_path / "site.yaml"
    lines = text.splitlines()
    i = next(n for n, ln in enumerate(lines) if ln.strip().startswith("cycle_s:"))
    indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
    lines[i] = f"{indent}cycle_s: 0.5"
    changed.write_text("\n".join(lines) + "\n")
    old, new = load_config(SITE), load_config(changed)
    assert old.config.control is not None and new.config.control is not None
    assert old.config.control.cycle_s != new.config.control.cycle_s
    rep = plan(old, new, old.config.gateways[0].id)
    assert "control" in rep.need_restart
    assert plan(old, load_config(SITE), old.config.gateways[0].id).need_restart == []
