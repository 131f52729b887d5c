"""Modbus driver writes: encoded through the codec, verified by read-back, refused when
the point is not writable."""

from __future__ import annotations

from typing import Any

import pytest
from pymodbus.constants import ExcCodes
from test_modbus_driver_support import config_device, device_from, registers_for, serving

from drivers.base import UnknownPoint, WriteError
from drivers.modbus.driver import ModbusDriver
from drivers.template import ModbusTemplate

BESS = ModbusTemplate(nature="bess", points={
    "soc_pct": {"address": 0, "type": "uint16", "scale": 0.1},
    "p_set_kw": {"address": 10, "type": "int32", "scale": 0.01, "access": "rw"},
    "watchdog_s": {"address": 12, "type": "uint16", "scale_factor": 13, "access": "rw"},
    "state": {"address": 14, "type": "uint16", "access": "r",
              "enum": {0: "standby", 1: "charging", 2: "discharging"}},
})
BREAKER = ModbusTemplate(nature="breaker", points={
    "closed": {"address": 0, "function": "discrete", "type": "bool"},
    "trip": {"address": 5, "function": "coil", "type": "bool", "access": "rw"},
    "close": {"address": 6, "function": "coil", "type": "bool", "access": "w"},
})


def bess_tables() -> Any:
    return registers_for(BESS, {"soc_pct": 55.5, "p_set_kw": 0.0, "watchdog_s": 60.0,
                                "state": "standby"}, sf={13: 1})


class Recorder:
    """A server action that records write requests and can ignore or refuse them."""

    def __init__(self) -> None:
        self.writes: list[tuple[int, int, list[Any]]] = []
        self.ignore = False
        self.refuse: ExcCodes | None = None

    async def action(self, fc: int, start: int, address: int, count: int, regs: list[int],
                       values: Any) -> ExcCodes | None:
        if values is None:
            return None
        self.writes.append((fc, address, list(values)))
        if self.refuse is not None:
            return self.refuse
        if self.ignore:  # the device acknowledges but keeps its old value
            if fc in (6, 16):
                values[:] = regs[address - start:address - start + len(values)]
            else:
                return None
        return None


async def test_write_uses_fc16_for_two_registers_and_returns_read_back() -> None:
    rec = Recorder()
    async with serving(device_from(1, bess_tables(), rec.action)) as srv:
        drv = ModbusDriver()
        io = drv.attach(config_device(nature="bess"), BESS, srv.tcp())
        try:
            assert await io.write("p_set_kw", -12.34) == pytest.approx(-12.34)
            assert rec.writes == [(16, 10, [0xFFFF, (-1234) & 0xFFFF])]
            assert (await io.read())["p_set_kw"] == pytest.approx(-12.34)
            assert io.stats.writes == 1
        finally:
            await drv.close()


async def test_write_applies_the_sunspec_scale_factor_with_fc6() -> None:
    rec = Recorder()
    async with serving(device_from(1, bess_tables(), rec.action)) as srv:
        drv = ModbusDriver()
        io = drv.attach(config_device(nature="bess"), BESS, srv.tcp())
        try:
            assert await io.write("watchdog_s", 120.0) == pytest.approx(120.0)
            assert rec.writes == [(6, 12, [12])]  # 12 * 10**1 s
        finally:
            await drv.close()


async def test_coils_write_and_write_only_points_skip_read_back() -> None:
    rec = Recorder()
    async with serving(device_from(1, registers_for(
            BREAKER, {"closed": True, "trip": False, "close": False}), rec.action)) as srv:
        drv = ModbusDriver()
        io = drv.attach(config_device(nature="breaker"), BREAKER, srv.tcp())
        try:
            assert await io.read() == {"closed": True, "trip": False}  # 'close' is write-only
            assert await io.write("trip", True) is True
            assert await io.write("close", True) is None
            assert [(fc, a) for fc, a, _ in rec.writes] == [(5, 5), (5, 6)]
            assert (await io.read())["trip"] is True
        finally:
            await drv.close()


async def test_read_back_mismatch_is_a_write_error() -> None:
    rec = Recorder()
    rec.ignore = True
    async with serving(device_from(1, bess_tables(), rec.action)) as srv:
        drv = ModbusDriver()
        io = drv.attach(config_device(nature="bess"), BESS, srv.tcp())
        try:
            with pytest.raises(WriteError, match=r"wrote 'p_set_kw' = 5.0 but read back 0.0"):
                await io.write("p_set_kw", 5.0)
            assert len(rec.writes) == 1
            assert io.stats.errors == 1
        finally:
            await drv.close()


async def test_device_refusal_and_unencodable_values_are_write_errors() -> None:
    rec = Recorder()
    async with serving(device_from(1, bess_tables(), rec.action)) as srv:
        drv = ModbusDriver()
        io = drv.attach(config_device(nature="bess"), BESS, srv.tcp())
        try:
            rec.refuse = ExcCodes.ILLEGAL_VALUE
            with pytest.raises(WriteError, match=r"refused .*ILLEGAL DATA VALUE \(3\) writing "
                                                 r"holding 10\+2 from dev1 \(unit 1\)"):
                await io.write("p_set_kw", 1.0)
            rec.refuse = None
            with pytest.raises(WriteError, match="does not fit in uint16"):
                await io.write("watchdog_s", 1e7)
            assert len(rec.writes) == 1  # the unencodable value never went on the wire
        finally:
            await drv.close()


async def test_writes_to_unknown_or_read_only_points_are_refused_before_any_io() -> None:
    rec = Recorder()
    async with serving(device_from(1, bess_tables(), rec.action)) as srv:
        drv = ModbusDriver()
        io = drv.attach(config_device(nature="bess"), BESS, srv.tcp())
        try:
            with pytest.raises(UnknownPoint, match=r"'soc_pct' is read-only \(writable: "
                                                   r"p_set_kw, watchdog_s\)"):
                await io.write("soc_pct", 50.0)
            with pytest.raises(UnknownPoint, match="'p_kw' is not in the template"):
                await io.write("p_kw", 1.0)
            assert rec.writes == []
            assert io.stats.requests == 0
        finally:
            await drv.close()


@pytest.mark.parametrize("steps, accepted", [(0, True), (1, True), (-1, True), (5, False)])
async def test_read_back_within_one_step_of_the_resolution_is_the_value_taken(
        steps: int, accepted: bool) -> None:
    async def action(fc: int, start: int, address: int, count: int, regs: list[int],
                     values: Any) -> ExcCodes | None:
        if values is not None and fc == 16:  # the device rounds to its own grid
            values[1] += steps  # low word of p_set_kw (0.01 kW per step)
        return None

    async with serving(device_from(1, bess_tables(), action)) as srv:
        drv = ModbusDriver()
        io = drv.attach(config_device(nature="bess"), BESS, srv.tcp())
        try:
            if accepted:  # what the device took is what the write reports
                assert await io.write("p_set_kw", 0.25) == pytest.approx(0.25 + steps * 0.01)
            else:
                with pytest.raises(WriteError, match=r"wrote 'p_set_kw' = 0.25 but read back "
                                                     r"0.3"):
                    await io.write("p_set_kw", 0.25)
        finally:
            await drv.close()
