"""The shipped site configs pass the checker, and say what their comments promise."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from drivers.template import template_names
from gateway.config.loader import check_config, load_config, run_check
from gateway.model import Nature

SITE_CONFIGS = Path(__file__).resolve().parent.parent / "site_configs"
CONFIGS = sorted(SITE_CONFIGS.glob("*.yaml"))


def test_the_examples_exist() -> None:
    assert {p.name for p in CONFIGS} >= {"demo.yaml", "campus.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_site_config_passes_the_checker(path: Path) -> None:
    out = io.StringIO()
    code = run_check(str(path), out)
    assert code == 0, out.getvalue()
    assert out.getvalue().startswith(f"{path}: OK — ")
    loaded = load_config(path)
    for dev in loaded.config.devices:
        assert loaded.template_of(dev.id).nature == dev.nature


def test_demo_is_one_gateway_on_loopback() -> None:
    cfg = load_config(SITE_CONFIGS / "demo.yaml").config
    assert [g.id for g in cfg.gateways] == ["gw1"]
    assert [(c.type, getattr(c, "host", None)) for c in cfg.connections] == [
        ("modbus_tcp", "127.0.0.1")]
    by_template = sorted((d.template, d.nature) for d in cfg.devices)
    assert by_template == [
        ("generic_bess", Nature.BESS), ("generic_breaker", Nature.BREAKER),
        ("generic_evse", Nature.EVSE), ("generic_evse", Nature.EVSE),
        ("generic_load", Nature.LOAD), ("meter_3ph", Nature.METER),
        ("sunspec_inverter", Nature.PV_INVERTER)]
    dev = {d.id: d for d in cfg.devices}
    assert dev["pv_roof"].ratings.kwp == 30
    assert (dev["battery"].ratings.capacity_kwh, dev["battery"].ratings.p_max_kw) == (50, 25)
    assert sorted(d.ratings.p_max_kw or 0 for d in cfg.devices if d.nature == Nature.EVSE) \
        == [11, 22]
    assert dev["grid_meter"].poll_interval_s == 0.5
    assert {d.poll_interval_s for d in cfg.devices if d.id != "grid_meter"} == {1.0}
    assert not cfg.historian.path.is_absolute()
    assert cfg.site.grid.import_limit_kw and cfg.site.grid.export_limit_kw is not None


def test_demo_simulation_section_is_validated() -> None:
    loaded = load_config(SITE_CONFIGS / "demo.yaml")
    sim = loaded.simulation
    assert sim is not None and sim.seed == 42
    assert sim.devices["ev_bay1"].v2g_capable is True


def test_bad_simulation_key_is_positioned(tmp_path: Path) -> None:
    text = (SITE_CONFIGS / "demo.yaml").read_text(encoding="utf-8")
    old = "      initial_soc_pct: 60\n"
    assert old in text
    bad = tmp_path / "demo.yaml"
    bad.write_text(text.replace(old, "      initial_soc_pct: 60\n      inital_soh_pct: 90\n"),
                   encoding="utf-8")
    line = text[: text.index(old)].count("\n") + 2
    found = check_config(bad)
    assert [(p.mark.line if p.mark else None, p.mark.col if p.mark else None, p.path)
            for p in found] == [(line, 7, "simulation.devices.battery.inital_soh_pct")]
    assert "unknown key" in found[0].message


def test_campus_covers_every_kind_of_connection_and_nature() -> None:
    cfg = load_config(SITE_CONFIGS / "campus.yaml").config
    assert len(cfg.gateways) == 2
    assert {c.type for c in cfg.connections} == {"modbus_tcp", "modbus_rtu_over_tcp",
                                                 "modbus_serial"}
    natures = {d.nature for d in cfg.devices}
    assert natures >= {Nature.PV_INVERTER, Nature.WIND_TURBINE, Nature.BESS, Nature.EVSE,
                       Nature.METER, Nature.BREAKER, Nature.LOAD}
    assert sum(d.nature == Nature.EVSE for d in cfg.devices) >= 4
    assert sum(d.nature == Nature.METER for d in cfg.devices) >= 3
    assert all(d.gateway in ("gw-main", "gw-south") for d in cfg.devices)
    assert 18 <= len(cfg.devices) <= 30
    serial = [c.id for c in cfg.connections if c.type == "modbus_serial"]
    assert {d.gateway for d in cfg.devices if d.connection in serial} == {"gw-south"}


def test_every_built_in_template_is_used_by_an_example() -> None:
    used = {d.template for p in CONFIGS for d in load_config(p).config.devices}
    assert set(template_names()) <= used
