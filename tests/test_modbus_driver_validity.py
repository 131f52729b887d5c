"""Values that cannot be true, read from a real pymodbus server: SunSpec not-implemented
patterns on mandatory points and values outside a template's range come back as
``Invalid`` (not as good values), each episode logged once, with one "valid again" line;
optional points the device lacks read as None."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pydantic import ValidationError
from test_modbus_driver_support import config_device, device_from, registers_for, serving

from drivers.modbus.driver import ModbusDriver
from drivers.template import ModbusTemplate, load_template
from gateway.model import Invalid, Quality
from gateway.poller import Poller, PollJob
from gateway.state import DeviceState, SiteState

# SunSpec not-implemented patterns: (type, raw on the wire, registers)
PATTERNS = [
    ("int16", 0x8000, [0x8000]),
    ("uint16", 0xFFFF, [0xFFFF]),
    ("int32", 0x80000000, [0x8000, 0x0000]),
    ("uint32", 0xFFFFFFFF, [0xFFFF, 0xFFFF]),
    ("uint16", 0, [0]),  # acc16
    ("uint32", 0, [0, 0]),  # acc32
]


@pytest.mark.parametrize("type_, raw, regs", PATTERNS,
                         ids=["int16", "uint16", "int32", "uint32", "acc16", "acc32"])
async def test_sunspec_not_implemented_is_invalid_on_mandatory_and_none_on_optional(
        type_: str, raw: int, regs: list[int]) -> None:
    point = {"type": type_, "not_implemented": raw, "scale": 0.001}
    tpl = ModbusTemplate(nature="pv_inverter", points={
        "p_kw": {"address": 0, **point},  # mandatory: control needs it
        "q_kvar": {"address": 2, **point, "optional": True},
    })
    holding = {i: r for i, r in enumerate(regs)} | {2 + i: r for i, r in enumerate(regs)}
    async with serving(device_from(1, {"holding": holding, "input": {}, "coil": {},
                                       "discrete": {}})) as srv:
        drv = ModbusDriver()
        io = drv.attach(config_device(nature="pv_inverter"), tpl, srv.tcp())
        try:
            got = await io.read()
        finally:
            await drv.close()
    width = 4 * len(regs)
    assert got["p_kw"] == Invalid(raw, f"0x{raw:0{width}X} (not implemented)")
    assert got["q_kvar"] is None


SOC = ModbusTemplate(nature="bess", points={
    "soc_pct": {"address": 0, "type": "uint16", "scale": 0.1, "min": 0, "max": 100},
    "p_kw": {"address": 1, "type": "int16", "scale": 0.01},
})


async def test_out_of_range_is_invalid_logged_once_and_recovers_with_one_line(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="drivers.modbus")
    soc = {"raw": 2500}

    async def action(fc: int, start: int, address: int, count: int, regs: list[int],
                     values: Any) -> None:
        regs[0 - start] = soc["raw"]  # the device's SOC register, as it reads now

    tables = registers_for(SOC, {"soc_pct": 0.0, "p_kw": 1.5})
    async with serving(device_from(1, tables, action)) as srv:
        drv = ModbusDriver()
        io = drv.attach(config_device("bess1", nature="bess"), SOC, srv.tcp())
        try:
            for _ in range(3):
                got = await io.read()
                assert got["soc_pct"] == Invalid(pytest.approx(250.0),
                                                 "250.0 outside 0..100 %")
                assert got["p_kw"] == pytest.approx(1.5)
            soc["raw"] = 555
            for _ in range(2):
                assert (await io.read())["soc_pct"] == pytest.approx(55.5)
            soc["raw"] = 1001  # a second episode is logged again
            assert isinstance((await io.read())["soc_pct"], Invalid)
        finally:
            await drv.close()
    lines = [r.getMessage() for r in caplog.records if "soc_pct" in r.getMessage()]
    assert lines == ["bess1: soc_pct = 250.0 outside 0..100 %: marked invalid",
                     "bess1: soc_pct valid again (55.5)",
                     "bess1: soc_pct = 100.1 outside 0..100 %: marked invalid"]


async def test_invalid_point_reaches_state_as_invalid_and_is_never_usable() -> None:
    tables = registers_for(SOC, {"soc_pct": 0.0, "p_kw": -2.0})
    tables["holding"][0] = 0xFFFF  # 6553.5 %
    state = SiteState()
    state.add_device(DeviceState("bess1", SOC.nature, max_age_s=60.0))
    async with serving(device_from(1, tables)) as srv:
        drv = ModbusDriver()
        io = drv.attach(config_device("bess1", nature="bess"), SOC, srv.tcp())
        try:
            assert await Poller(state).poll_once(PollJob(io, 1.0))
        finally:
            await drv.close()
    dev = state.devices["bess1"]
    assert dev.readings["soc_pct"].quality is Quality.INVALID
    assert dev.invalid["soc_pct"] == "6553.5 outside 0..100 %"
    assert dev.value("soc_pct") is None
    assert dev.value("p_kw") == pytest.approx(-2.0)


def test_range_is_checked_when_the_template_loads() -> None:
    with pytest.raises(ValidationError, match="min 100 is above max 0"):
        ModbusTemplate(nature="bess", points={
            "soc_pct": {"address": 0, "min": 100, "max": 0}})
    with pytest.raises(ValidationError, match="apply to numbers only"):
        ModbusTemplate(nature="bess", points={
            "state": {"address": 0, "enum": {1: "idle"}, "max": 3}})
    bess = load_template("generic_bess")
    assert (bess.points["soc_pct"].min, bess.points["soc_pct"].max) == (0, 100)
    assert bess.points["soc_pct"].optional is False
    assert load_template("generic_evse").points["ev_soc_pct"].optional is True
