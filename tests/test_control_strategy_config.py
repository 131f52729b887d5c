"""One config section per strategy (``control.strategies.<name>``): the sections parse into
their typed models, a bare boolean is the switch, and a key of the old flat section is an
error at that key saying where it moved, reported with the file's other errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from gateway.cli import main
from gateway.config.loader import load_config
from gateway.control.config import MOVED, ControlConfig, Strategies
from gateway.control.strategies.peak_shaving_config import PeakShavingConfig
from tests.test_config_checks import BASE, problems, tpl_dir, where

__all__ = ["tpl_dir"]  # the fixture, used by name
REPO = Path(__file__).resolve().parent.parent

SECTIONS = """\
control:
  strategies:
    peak_shaving: {enabled: true, threshold_kw: 80}
    self_consumption: {reserve_soc_pct: 25}
    time_of_use: {cheap_below_per_kwh: 0.12, expensive_above_per_kwh: 0.4, target_soc_pct: 85}
    ev_charging: {pv_surplus: false, site_limit_kw: 60}
    v2g: {min_soc_pct: 35, margin_h: 2}
    load_shedding: {restore_hysteresis_kw: 3, restore_delay_s: 20}
    plan_tracking: {stale_s: 900}
    grid_limits: {enabled: true, pv_curtailment: false}
"""


def test_each_strategy_section_parses_into_its_own_model(tmp_path: Path, tpl_dir: Path
                                                         ) -> None:
    f = tmp_path / "site.yaml"
    f.write_text(BASE + SECTIONS, encoding="utf-8")
    cfg = load_config(f, template_dir=tpl_dir).config
    assert cfg.control is not None
    st = cfg.control.strategies
    assert isinstance(st.peak_shaving, PeakShavingConfig)
    assert (st.peak_shaving.enabled, st.peak_shaving.threshold_kw) == (True, 80.0)
    assert st.self_consumption.reserve_soc_pct == 25.0 and st.self_consumption.enabled
    assert (st.time_of_use.cheap_below_per_kwh, st.time_of_use.expensive_above_per_kwh,
            st.time_of_use.target_soc_pct) == (0.12, 0.4, 85.0)
    assert (st.ev_charging.pv_surplus, st.ev_charging.site_limit_kw) == (False, 60.0)
    assert (st.v2g.min_soc_pct, st.v2g.margin_h) == (35.0, 2.0)
    assert (st.load_shedding.restore_hysteresis_kw, st.load_shedding.restore_delay_s) == \
        (3.0, 20.0)
    assert st.plan_tracking.stale_s == 900.0
    assert st.grid_limits.pv_curtailment is False


def test_a_bare_boolean_is_the_switch_and_keeps_the_defaults() -> None:
    st = Strategies.model_validate({"peak_shaving": False, "v2g": True})
    assert st.peak_shaving.enabled is False and st.peak_shaving.threshold_kw is None
    assert st.v2g.enabled is True and st.v2g.min_soc_pct == 30.0
    assert st.ev_charging.enabled is True  # absent: on, with its defaults
    with pytest.raises(ValueError, match="Input should be a valid boolean"):
        Strategies.model_validate({"v2g": {"enabled": "sometimes"}})
    with pytest.raises(ValueError, match=r"expected true, false or a mapping of its "
                                         r"settings \(enabled, min_soc_pct, margin_h\)"):
        Strategies.model_validate({"v2g": 5})


def test_grid_strategies_switched_off_need_no_grid_meter(tmp_path: Path, tpl_dir: Path
                                                        ) -> None:
    sub = BASE.replace("    unit_id: 2\n", "    unit_id: 2\n    role: sub\n")
    on = problems(tmp_path, tpl_dir, sub + "control:\n  strategies:\n    peak_shaving: true\n")
    assert [p.path for p in on] == ["control"]
    assert "grid_limits, peak_shaving, self_consumption do nothing" in on[0].message
    off = ("control:\n  strategies:\n    grid_limits: false\n    peak_shaving: false\n"
           "    self_consumption: {enabled: false, reserve_soc_pct: 10}\n")
    assert problems(tmp_path, tpl_dir, sub + off) == []


def test_an_old_flat_key_says_where_it_moved_at_its_line(tmp_path: Path, tpl_dir: Path
                                                         ) -> None:
    old = ("control:\n  strategies:\n    peak_shaving: true\n    peak_threshold_kw: 80\n"
           "    ev_charging: {site_limit_kw: -5}\n    v2g_margin_h: 2\n")
    found = problems(tmp_path, tpl_dir, BASE + old)
    lines = len(BASE.splitlines())
    got = [(where(p), p.path, p.message) for p in found]
    assert got[0] == (f"site.yaml:{lines + 4}:5", "control.strategies.peak_threshold_kw",
                      "moved: write strategies.peak_shaving.threshold_kw")
    # the section's other errors come in the same run, each at its own place
    assert got[1][:2] == (f"site.yaml:{lines + 5}:34",
                          "control.strategies.ev_charging.site_limit_kw")
    assert "greater than or equal to 0" in got[1][2]
    assert got[2] == (f"site.yaml:{lines + 6}:5", "control.strategies.v2g_margin_h",
                      "moved: write strategies.v2g.margin_h")
    assert len(got) == 3


@pytest.mark.parametrize("old", sorted(MOVED))
def test_every_old_key_names_a_field_that_exists(old: str) -> None:
    section, _, field = MOVED[old].partition(".")
    model = Strategies.model_fields[section].annotation
    assert field in getattr(model, "model_fields", {}), MOVED[old]


def test_autogrid_check_prints_the_moved_key_with_file_and_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo = (REPO / "site_configs" / "demo.yaml").read_text(encoding="utf-8")
    new = "  strategies:\n    self_consumption: {reserve_soc_pct: 20}"
    assert demo.count(new) == 1
    text = demo.replace(new, "  strategies:\n    reserve_soc_pct: 30")  # as it used to be
    line = next(i for i, ln in enumerate(text.splitlines(), 1)
                if ln.startswith("    reserve_soc_pct: 30"))
    f = tmp_path / "site.yaml"
    f.write_text(text, encoding="utf-8")
    assert main(["check", str(f)]) == 1
    out = capsys.readouterr()
    assert (f"site.yaml:{line}:5: control.strategies.reserve_soc_pct: moved: write "
            f"strategies.self_consumption.reserve_soc_pct") in out.out + out.err
    assert "Traceback" not in out.out + out.err


def test_the_readme_example_is_a_valid_control_section() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("  ```yaml\n  control:\n    strategies:\n") + len("  ```yaml\n")
    block = textwrap.dedent(readme[start:readme.index("  ```\n", start)])
    control = ControlConfig.model_validate(yaml.safe_load(block)["control"])
    st = control.strategies
    assert st.peak_shaving.threshold_kw == 180.0 and st.ev_charging.site_limit_kw == 60.0
    # the rest are the defaults, as the README says
    written = yaml.safe_load(block)["control"]["strategies"]
    for name, fields in written.items():
        for key, value in fields.items():
            if key not in ("threshold_kw", "site_limit_kw"):
                assert getattr(Strategies(), name).model_dump()[key] == value, (name, key)
