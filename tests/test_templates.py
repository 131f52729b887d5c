"""Every built-in template loads, and a broken template is reported well."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from drivers.template import TEMPLATE_DIR, load_template_file, template_names
from gateway.model import Nature
from gateway.yamlsrc import SourceError
from sim_devices import sunspec

EXPECTED = {
    "sunspec_inverter": Nature.PV_INVERTER, "generic_bess": Nature.BESS,
    "generic_evse": Nature.EVSE, "meter_3ph": Nature.METER,
    "generic_breaker": Nature.BREAKER, "generic_load": Nature.LOAD,
    "generic_wind": Nature.WIND_TURBINE,
}


def test_every_template_loads_with_its_nature() -> None:
    assert set(EXPECTED) <= set(template_names())
    for name in template_names():
        tpl = load_template_file(TEMPLATE_DIR / f"{name}.yaml")
        assert tpl.points, name
        if name in EXPECTED:
            assert tpl.nature is EXPECTED[name], name


def test_every_register_line_names_the_vendor_register() -> None:
    for path in sorted(TEMPLATE_DIR.glob("*.yaml")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.match(r"\s*(address|scale_factor):", line):
                assert re.search(r"#\s*\S+.*:\s*\S", line), f"{path.name}:{n}: {line.strip()}"


def test_templates_cover_both_word_orders_and_all_functions() -> None:
    templates = [load_template_file(TEMPLATE_DIR / f"{n}.yaml") for n in template_names()]
    points = [p for t in templates if t.protocol == "modbus" for p in t.points.values()]
    assert {p.word_order for p in points if p.width == 2} == {"big", "little"}
    assert {str(p.function) for p in points} == {"holding", "input", "coil", "discrete"}


def test_sunspec_template_addresses_match_pysunspec2_layout() -> None:
    """Each '# SunSpec <model>: <point>' comment is the point at that address."""
    lay = sunspec.layout(sunspec.INVERTER_CHAIN, 40000)
    path = TEMPLATE_DIR / "sunspec_inverter.yaml"
    seen = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\s*(?:address:|scale_factor:)?\s*(\d+):?\s*.*#\s*SunSpec (\d+): (\w+)",
                     line)
        if m:
            addr, model, point = int(m[1]), int(m[2]), m[3]
            assert lay.address(model, point) == addr, line.strip()
            seen += 1
    tpl = load_template_file(path)
    assert tpl.sunspec and tpl.sunspec_base == 40000
    assert seen == len(tpl.points) + sum(p.scale_factor is not None
                                         for p in tpl.points.values()) + len(tpl.constants)
    assert tpl.points["p_kw"].address == lay.address(103, "W")
    assert tpl.points["p_kw"].scale_factor == lay.address(103, "W_SF")
    assert tpl.points["p_limit_pct"].address == lay.address(123, "WMaxLimPct")


def test_sunspec_image_is_a_valid_chain() -> None:
    lay = sunspec.layout((1, 103, 123), 40000)
    regs = sunspec.image(lay, strings={(1, "Mn"): "ACME"})
    assert (regs[40000], regs[40001]) == sunspec.SUNS_MARKER
    assert (regs[40002], regs[40003]) == (1, 66)
    assert (regs[40070], regs[40071]) == (103, 50)
    assert (regs[40122], regs[40123]) == (123, 24)
    assert (regs[40148], regs[40149]) == sunspec.END_MODEL
    assert regs[lay.address(1, "Mn")] == int.from_bytes(b"AC", "big")
    assert regs[lay.address(103, "W")] == 0x8000  # int16 not implemented
    with pytest.raises(KeyError, match="model 103 has no point 'Watts'"):
        lay.address(103, "Watts")


BAD = """\
nature: pv_inverter
points:
  p_kw:
    address: 40084
    type: int17
  q_kvar:
    address: -3
    colour: red
  soc_pct:
    address: 5
"""


def test_a_bad_template_lists_every_error_with_its_position(tmp_path: Path) -> None:
    path = tmp_path / "bad_inverter.yaml"
    path.write_text(BAD, encoding="utf-8")
    with pytest.raises(SourceError) as err:
        load_template_file(path)
    text = str(err.value)
    lines = text.splitlines()
    assert len(lines) >= 3, text
    assert any(line.startswith(f"{path}:5:11: points.p_kw.type: ") for line in lines), text
    assert any(line.startswith(f"{path}:7:14: points.q_kvar.address: ") for line in lines), text
    assert any(line.startswith(f"{path}:8:5: points.q_kvar.colour: unknown key")
               for line in lines), text
    assert "Traceback" not in text and "pydantic.dev" not in text
    assert "int17" in text  # says what it found


def test_a_template_point_outside_its_nature_is_named(tmp_path: Path) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text("nature: meter\npoints:\n  soc_pct:\n    address: 5  # X: Y\n",
                    encoding="utf-8")
    with pytest.raises(SourceError, match=r"odd.yaml:\d+:\d+: points: 'soc_pct' is not a "
                                          r"point of nature 'meter'"):
        load_template_file(path)
