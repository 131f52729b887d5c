"""Site-local templates: directories listed in the site config, checked like the
built-ins, replacing a built-in only where the config says so; shared blocks included
instead of copied, with their problems reported in their own file."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.template import load_template
from gateway.config.loader import check_config, load_config
from gateway.yamlsrc import Problem

SITE = """\
site: {name: Local models}
gateways: [{id: gw1}]
connections:
  - {id: bus, type: modbus_tcp, host: 127.0.0.1, port: 15020}
devices:
  - {id: m1, nature: meter, template: METER, connection: bus, unit_id: 1}
historian: {enabled: false}
"""

LOCAL_METER = """\
nature: meter
model: Site meter from our own datasheet
points:
  p_kw: {address: 10, function: input, type: float32}
"""

COMMON = """\
# The part every SunSpec device shares, written once.
sunspec: true
sunspec_base: 40000
points:
  f_hz:
    address: 40086  # SunSpec 103: Hz
    type: uint16
    scale_factor: 40087  # SunSpec 103: Hz_SF
constants:
  40087: -2  # SunSpec 103: Hz_SF
"""

WITH_COMMON = """\
nature: pv_inverter
include: _sunspec_common.yaml
points:
  p_kw:
    address: 40084  # SunSpec 103: W
    type: int16
    scale_factor: 40085  # SunSpec 103: W_SF
constants:
  40085: 1
"""


def site(tmp_path: Path, template: str, templates: str | None) -> Path:
    text = SITE.replace("METER", template)
    if templates is not None:
        text += f"templates: {templates}\n"
    f = tmp_path / "site.yaml"
    f.write_text(text, encoding="utf-8")
    return f


def local_dir(tmp_path: Path, name: str = "models", **files: str) -> Path:
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    for stem, text in files.items():
        (d / f"{stem}.yaml").write_text(text, encoding="utf-8")
    return d


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


def test_site_template_is_found_relative_to_the_config(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    local_dir(tmp_path, site_meter=LOCAL_METER)
    cfg = site(tmp_path, "site_meter", "[models]")
    monkeypatch.chdir("/")  # the config's directory counts, not the working directory
    loaded = load_config(cfg)
    tpl = loaded.template_of("m1")
    assert tpl.model == "Site meter from our own datasheet"
    assert list(tpl.points) == ["p_kw"]
    assert loaded.config.template_library().load("site_meter") == tpl  # what the daemon uses


def test_without_the_directory_the_template_is_unknown(tmp_path: Path) -> None:
    local_dir(tmp_path, site_meter=LOCAL_METER)
    p = only(check_config(site(tmp_path, "site_meter", None)))
    assert p.path == "devices[0].template" and "unknown template 'site_meter'" in p.message


def test_site_template_is_checked_like_a_built_in(tmp_path: Path) -> None:
    local_dir(tmp_path, site_meter=LOCAL_METER.replace("p_kw:", "p_kilowatt:"))
    p = only(check_config(site(tmp_path, "site_meter", "[models]")))
    assert p.path == "devices[0].template"
    assert "'p_kilowatt' is not a point of nature 'meter'" in p.message
    assert str(tmp_path / "models" / "site_meter.yaml") in p.message


def test_a_built_in_name_is_replaced_only_when_the_config_says_so(tmp_path: Path) -> None:
    local_dir(tmp_path, meter_3ph=LOCAL_METER)
    p = only(check_config(site(tmp_path, "meter_3ph", "[models]")))
    assert p.path == "templates[0]" and p.mark is not None and p.mark.line == 8
    assert "has the name of a built-in template" in p.message and "override" in p.message
    for override in ("true", "[meter_3ph]"):
        loaded = load_config(site(tmp_path, "meter_3ph", f"[{{path: models, override: "
                                                         f"{override}}}]"))
        assert loaded.template_of("m1").model == "Site meter from our own datasheet"
    assert load_template("meter_3ph").model != "Site meter from our own datasheet"
    p = only(check_config(site(tmp_path, "meter_3ph", "[{path: models, override: [other]}]")))
    assert "has the name of a built-in template" in p.message


def test_one_name_in_two_site_directories_is_refused(tmp_path: Path) -> None:
    local_dir(tmp_path, "a", site_meter=LOCAL_METER)
    local_dir(tmp_path, "b", site_meter=LOCAL_METER)
    p = only(check_config(site(tmp_path, "site_meter", "[a, b]")))
    assert p.path == "templates[1]" and "is in both" in p.message


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    p = only(check_config(site(tmp_path, "meter_3ph", "[nowhere]")))
    assert p.path == "templates[0].path"
    assert f"'{tmp_path / 'nowhere'}' does not exist" in p.message


def test_a_shared_block_is_included_not_copied(tmp_path: Path) -> None:
    local_dir(tmp_path, _sunspec_common=COMMON, inv_a=WITH_COMMON,
              inv_b=WITH_COMMON.replace("scale_factor: 40085", "scale_factor: 40085\n    "
                                                              "scale: 0.001"))
    cfg = site(tmp_path, "inv_a", "[models]").read_text().replace("nature: meter",
                                                                  "nature: pv_inverter")
    (tmp_path / "site.yaml").write_text(cfg)
    loaded = load_config(tmp_path / "site.yaml")
    lib = loaded.config.template_library()
    assert "_sunspec_common" not in lib.names  # a block, not a template
    a, b = lib.load("inv_a"), lib.load("inv_b")
    for tpl in (a, b):
        assert tpl.sunspec and tpl.sunspec_base == 40000
        assert sorted(tpl.points) == ["f_hz", "p_kw"]
        assert tpl.constants == {40085: 1, 40087: -2}
    assert (a.points["p_kw"].scale, b.points["p_kw"].scale) == (1.0, 0.001)


def test_a_problem_in_a_shared_block_names_the_block(tmp_path: Path) -> None:
    local_dir(tmp_path, _sunspec_common=COMMON.replace("type: uint16", "type: uint61"),
              inv_a=WITH_COMMON)
    cfg = site(tmp_path, "inv_a", "[models]").read_text().replace("nature: meter",
                                                                  "nature: pv_inverter")
    (tmp_path / "site.yaml").write_text(cfg)
    p = only(check_config(tmp_path / "site.yaml"))
    block = tmp_path / "models" / "_sunspec_common.yaml"
    assert f"{block}:7:11: points.f_hz.type:" in p.message  # its own file, line and column


async def test_a_site_template_is_simulated_and_polled_end_to_end(tmp_path: Path) -> None:
    """The simulator serves a site template's registers and the daemon polls them: the
    same library resolves the name on both sides (a built-in copied under a new name,
    with its own model line)."""
    from drivers.template import TEMPLATE_DIR
    from gateway.config.models import SiteConfig
    from gateway.daemon import Daemon
    from gateway.demo import with_ports
    from gateway.model import Quality
    from sim_devices.runner import SimRunner
    from tests.waiting import until

    text = (TEMPLATE_DIR / "generic_bess.yaml").read_text(encoding="utf-8")
    local_dir(tmp_path, site_bess=text.replace("\nmodel:", "\nmodel: Site battery,", 1))
    cfg = SiteConfig.model_validate({
        "site": {"name": "local", "latitude": 48.0, "longitude": 11.0},
        "gateways": [{"id": "gw1", "api_socket": str(tmp_path / "api.sock")}],
        "templates": [str(tmp_path / "models")],
        "connections": [{"id": "tcp", "type": "modbus_tcp", "host": "127.0.0.1", "port": 1,
                         "timeout_s": 0.5}],
        "devices": [{"id": "bat", "nature": "bess", "template": "site_bess",
                     "connection": "tcp", "poll_interval_s": 0.2,
                     "ratings": {"capacity_kwh": 50, "p_max_kw": 25}}],
        "historian": {"enabled": False},
        "simulation": {"seed": 1, "clock": {"start": "2025-06-21T12:00:00+02:00"}},
    })
    assert cfg.template_library().load("site_bess").model.startswith("Site battery, BESS")
    runner = SimRunner(cfg, port_overrides={"tcp": 0})
    ports = await runner.start()
    daemon = Daemon(with_ports(cfg, ports))
    try:
        assert runner.skipped == {}
        await daemon.start()
        dev = daemon.state.devices["bat"]
        await until(lambda: dev.health.quality is Quality.GOOD, "the site template's device")
        assert isinstance(dev.value("soc_pct"), float)
    finally:
        await daemon.shutdown()
        await runner.stop()
