"""The shipped site configs pass the checker, say what their comments promise, and run:
the daemon against their simulated devices, with the controller steering by the PCC."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from drivers.can.connection import CanConnection
from drivers.template import template_names
from gateway.apiclient import ApiClient
from gateway.config.loader import check_config, load_config, run_check
from gateway.config.models import SiteConfig
from gateway.control.component import ControlComponent
from gateway.daemon import Daemon
from gateway.demo import _SERVED as SERVED
from gateway.demo import with_ports
from gateway.model import Nature
from sim_devices.runner import SimRunner
from tests.waiting import until_async

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
        ("generic_breaker", Nature.BREAKER),
        ("generic_evse", Nature.EVSE), ("generic_evse", Nature.EVSE),
        ("generic_load", Nature.LOAD), ("generic_load", Nature.LOAD),
        ("meter_3ph", Nature.METER), ("sunspec_inverter", Nature.PV_INVERTER)]
    dev = {d.id: d for d in cfg.devices}
    assert dev["pv_roof"].ratings.kwp == 30
    assert (dev["battery"].ratings.capacity_kwh, dev["battery"].ratings.p_max_kw) == (50, 25)
    assert sorted(d.ratings.p_max_kw or 0 for d in cfg.devices if d.nature == Nature.EVSE) \
        == [11, 22]
    assert dev["grid_meter"].poll_interval_s == 0.5
    assert {d.poll_interval_s for d in cfg.devices if d.id != "grid_meter"} == {1.0}
    # it can island: a PCC breaker, and a critical load the battery carries
    assert cfg.control is not None
    assert dev[cfg.control.emergency.pcc_breaker or ""].nature == Nature.BREAKER
    assert [d.id for d in cfg.devices if d.control and d.control.priority == "critical"] \
        == ["it_rack"]
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


def runnable(cfg: SiteConfig, tmp: Path) -> SiteConfig:
    """The shipped config as a test can run it: sockets, databases and CAN ptys in ``tmp``
    (the ports of the served connections are patched once the simulators listen)."""
    gws = [g.model_copy(update={"api_socket": tmp / f"{g.id}.sock"}) for g in cfg.gateways]
    conns = [c.model_copy(update={"channel": str(tmp / f"{c.id}.pty")})
             if isinstance(c, CanConnection) else c for c in cfg.connections]
    hist = cfg.historian.model_copy(update={"path": tmp / "history.sqlite"})
    return cfg.model_copy(update={"gateways": gws, "connections": conns, "historian": hist})


def grid_gateway(cfg: SiteConfig) -> str:
    """The gateway that owns the grid meter: its controller steers by the PCC."""
    meters = [d for d in cfg.devices if d.nature == Nature.METER]
    meter = next((d for d in meters if d.role == "grid"), meters[0])
    return meter.gateway or cfg.gateways[0].id


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
async def test_each_example_runs_controlled(path: Path, tmp_path: Path) -> None:
    cfg = runnable(load_config(path).config, tmp_path)
    assert cfg.control is not None and cfg.control.controller, "an example without control"
    served = {c.id: 0 for c in cfg.connections if c.type in SERVED}
    runner = SimRunner(cfg, port_overrides=served)
    ports = await runner.start()
    daemon = Daemon(with_ports(cfg, ports), grid_gateway(cfg))
    try:
        await daemon.start()
        comp = next(c for c in daemon.components if isinstance(c, ControlComponent))
        async with ApiClient(daemon.socket_path) as api:
            async def controlled() -> bool:
                st = await api.request("control_status")
                return st["cycles"] > 3 and bool(st["setpoints"]) \
                    and comp.controller.meter_ts is not None
            await until_async(controlled, f"{path.name}: the controller steering by the PCC")
            first = await api.request("control_status")
            summary = await api.request("summary")
            assert summary["grid_kw"] is not None, summary
            assert "no PCC reading" not in str(first["notes"]), first["notes"]

            async def advancing() -> bool:
                return (await api.request("control_status"))["cycles"] > first["cycles"]
            await until_async(advancing, f"{path.name}: control cycles advancing")
    finally:
        await daemon.shutdown()
        await runner.stop()
