"""The gateway against a hostile slcan adapter on a pty (tests/hostile_slcan.py): the
daemon polls a Pylontech-style BMS through it while the adapter sends all-0xFF payloads,
out-of-range values, short and long frames, garbage lines and a flood of unknown ids.
Asserted on what the gateway publishes (SiteState quality), on its logs, and on its frame
counters; never on CPU time (that is bench/can_flood.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers.base import WriteError
from drivers.can.device import CanDeviceIO
from drivers.can.driver import CanDriver
from drivers.can.link import EXTENDED, CanLink
from drivers.template import load_template
from gateway.config.models import SiteConfig
from gateway.daemon import Daemon
from gateway.model import Invalid, Quality
from tests.hostile_slcan import HostileAdapter
from tests.waiting import until

TEMPLATE = load_template("pylontech_bms_can")
GOOD_POINTS = {  # DBC signal values of a healthy 16-cell LFP pack at rest
    "BMS_Limits": {"ChargeVoltageLimit": 56.8, "ChargeCurrentLimit": 100.0,
                   "DischargeCurrentLimit": 100.0, "DischargeVoltageLimit": 46.4},
    "BMS_SOC": {"SOC": 50, "SOH": 100},
    "BMS_Status": {"PackVoltage": 53.2, "PackCurrent": 0.0, "AvgTemperature": 25.0},
    "BMS_CellExtremes": {"MinCellVoltage": 3.32, "MaxCellVoltage": 3.34,
                         "MinCellTemperature": 24, "MaxCellTemperature": 26},
}


def payload(message: str, **signals: float) -> bytes:
    """The frame of ``message`` with the good values, ``signals`` overriding some."""
    msg = TEMPLATE.message(message)
    values = {s.name: 0 for s in msg.signals}
    values.update(GOOD_POINTS.get(message, {}))
    if message == "BMS_Alarms":
        values.update(MarkerP=ord("P"), MarkerN=ord("N"), ModuleCount=2)
    values.update(signals)
    return bytes(msg.encode(values, scaling=True, strict=False))


def good_frames() -> dict[str, tuple[int, bytes]]:
    names = ("BMS_Limits", "BMS_SOC", "BMS_Status", "BMS_Alarms", "BMS_CellExtremes")
    return {n: (TEMPLATE.message(n).frame_id, payload(n)) for n in names}


def site(tmp: Path, frame_timeout_s: float = 1.0) -> SiteConfig:
    return SiteConfig.model_validate({
        "site": {"name": "hostile adapter"},
        "gateways": [{"id": "gw1", "api_socket": str(tmp / "api.sock")}],
        "connections": [{"id": "rack", "type": "can", "interface": "slcan",
                         "channel": str(tmp / "can0"), "frame_timeout_s": frame_timeout_s,
                         "reconnect_delay_s": 0.05, "reconnect_delay_max_s": 0.3}],
        "devices": [{"id": "bms", "nature": "bms", "template": "pylontech_bms_can",
                     "connection": "rack", "poll_interval_s": 0.05}],
        "historian": {"enabled": False},
    })


@dataclass
class Rig:
    adapter: HostileAdapter
    daemon: Daemon
    frames: dict[str, tuple[int, bytes]]  # what the BMS sends every period; tests edit it

    @property
    def io(self) -> CanDeviceIO:
        io = self.daemon.ios["bms"]
        assert isinstance(io, CanDeviceIO)
        return io

    @property
    def link(self) -> CanLink:
        return self.io.link

    def reading(self, point: str) -> tuple[object, Quality]:
        r = self.daemon.state.devices["bms"].readings.get(point)
        return (None, Quality.OFFLINE) if r is None else (r.value, r.quality)

    def quality(self) -> Quality:
        return self.daemon.state.devices["bms"].health.quality

    def polls(self) -> int:
        return self.daemon.state.devices["bms"].health.polls


async def _send_periodically(rig: Rig) -> None:
    """The BMS's periodic frames (faster than its 1 s so the test runs quickly)."""
    while True:
        if rig.adapter.adapter_open:
            for arb, data in list(rig.frames.values()):
                rig.adapter.frame(arb, data)
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(tmp_path: Path, periodic: bool = True) -> AsyncIterator[Rig]:
    adapter = HostileAdapter(tmp_path / "can0")
    await adapter.start()
    daemon = Daemon(site(tmp_path), socket_path=tmp_path / "api.sock")
    rig = Rig(adapter, daemon, good_frames())
    sender = asyncio.create_task(_send_periodically(rig), name="hostile bms") \
        if periodic else None
    try:
        await daemon.start()
        yield rig
    finally:
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        await daemon.shutdown()
        await adapter.stop()


def logged(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


async def polled_more(rig: Rig, n: int = 5) -> None:
    """Wait until the daemon has read the device ``n`` more times."""
    start = rig.polls()
    await until(lambda: rig.polls() >= start + n, f"{n} more polls")


async def test_impossible_values_are_published_invalid_and_logged_once_per_episode(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="drivers.can")
    async with running(tmp_path) as rig:
        await until(lambda: rig.reading("soc_pct") == (50.0, Quality.GOOD), "SOC 50 % good")
        dev = rig.daemon.state.devices["bms"]

        # all-0xFF payloads: the not-available pattern, never 65535 % or 65262 degC
        rig.frames["BMS_SOC"] = (0x355, b"\xff" * 4)
        rig.frames["BMS_CellExtremes"] = (0x373, b"\xff" * 8)
        rig.frames["BMS_Status"] = (0x356, b"\xff" * 6)
        await until(lambda: rig.reading("soc_pct")[1] is Quality.INVALID
                    and rig.reading("cell_temp_max_c")[1] is Quality.INVALID
                    and rig.reading("i_pack_a")[1] is Quality.INVALID, "invalid readings")
        assert rig.reading("soc_pct") == (65535.0, Quality.INVALID)
        assert rig.reading("cell_temp_max_c") == (65262.0, Quality.INVALID)
        assert rig.reading("cell_v_max_v") == (65.535, Quality.INVALID)
        # a signed signal has no per-signal pattern at -1: the all-0xFF frame marks it
        assert "all-0xFF BMS_Status frame" in dev.invalid["i_pack_a"]
        assert "not-available pattern 0xFFFF" in dev.invalid["soc_pct"]
        assert dev.value("soc_pct") is None and dev.value("cell_temp_max_c") is None
        assert rig.reading("soh_pct")[1] is Quality.INVALID
        assert rig.reading("i_charge_max_a") == (100.0, Quality.GOOD)  # its frame is fine
        await polled_more(rig)
        na = "bms: soc_pct = 65535 is the not-available pattern 0xFFFF (all 16 bits set)"
        assert logged(caplog, na) == 1
        assert logged(caplog, "bms: cell_temp_max_c = 65262 is the not-available") == 1

        # recovery: announced once, usable again
        rig.frames.update(good_frames())
        await until(lambda: rig.reading("soc_pct") == (50.0, Quality.GOOD)
                    and rig.reading("cell_temp_max_c") == (26.0, Quality.GOOD), "good again")
        await polled_more(rig)
        assert logged(caplog, "bms: soc_pct = 50 is valid again") == 1
        assert dev.value("soc_pct") == 50.0 and "soc_pct" not in dev.invalid

        # outside the DBC range: SOC 250 %, SOH 300 %, a cell at 5.5 V, one at 160 degC
        rig.frames["BMS_SOC"] = (0x355, payload("BMS_SOC", SOC=250, SOH=300))
        rig.frames["BMS_CellExtremes"] = (0x373, payload(
            "BMS_CellExtremes", MaxCellVoltage=5.5, MaxCellTemperature=160))
        await until(lambda: rig.reading("soc_pct") == (250.0, Quality.INVALID)
                    and rig.reading("cell_temp_max_c") == (160.0, Quality.INVALID),
                    "out-of-range readings invalid")
        assert rig.reading("soh_pct") == (300.0, Quality.INVALID)
        assert rig.reading("cell_v_max_v") == (5.5, Quality.INVALID)
        assert rig.reading("cell_v_min_v") == (3.32, Quality.GOOD)
        await polled_more(rig)
        assert logged(caplog, "bms: soc_pct = 250 is above the maximum of BMS_SOC.SOC "
                              "(100 %): marked invalid") == 1
        assert logged(caplog, "bms: soh_pct = 300 is above the maximum") == 1
        assert logged(caplog, "bms: soc_pct = 50 is valid again") == 1  # no new episode yet
        assert rig.quality() is Quality.GOOD  # the device answers; its values are invalid


async def test_short_long_and_garbage_frames(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        await until(lambda: rig.quality() is Quality.GOOD, "bms good")
        link, status = rig.link, rig.io.slots["BMS_Status"]

        # lines that are no frame, or lie about their DLC: counted, nothing delivered
        bad = [b"\x00\xff garbage\r", b"t1G#garbage\r", b"tZZZ8\r", b"t35\r",
               b"t3559" + b"00" * 9 + b"\r",  # DLC 9 on a classic frame
               b"t3558AABB\r",  # DLC 8, 2 bytes
               b"t355411223344556677\r"]  # DLC 4, 7 bytes
        before, soc_frames = link.counters["malformed"], rig.io.slots["BMS_SOC"].frames
        for line in bad:
            assert rig.adapter.line(line)
        await until(lambda: link.counters["malformed"] == before + len(bad),
                    "every bad line counted")
        await until(lambda: rig.io.slots["BMS_SOC"].frames > soc_frames + 3, "frames flow")
        assert rig.reading("soc_pct") == (50.0, Quality.GOOD)  # never 0x2211 of a bad line

        # a longer frame than the DBC says (padding): the leading bytes are the message
        rig.frames["BMS_SOC"] = (0x355, payload("BMS_SOC", SOC=61) + b"\x00" * 4)
        await until(lambda: rig.reading("soc_pct") == (61.0, Quality.GOOD), "long frame read")

        # a short frame: malformed, ignored; the last good payload ages out -> offline
        rig.frames["BMS_Status"] = (0x356, b"\x10\x14")
        await until(lambda: status.malformed >= 3, "short frames counted")
        await until(lambda: rig.quality() is Quality.OFFLINE, "bms offline")
        err = rig.daemon.state.devices["bms"].health.last_error or ""
        assert "BMS_Status (0x356)" in err and "no fresh frame" in err
        assert rig.reading("v_pack_v")[1] is Quality.OFFLINE
        rig.frames["BMS_Status"] = (0x356, payload("BMS_Status"))
        await until(lambda: rig.quality() is Quality.GOOD, "bms back")
        assert rig.reading("v_pack_v") == (53.2, Quality.GOOD)
        assert link.up  # nothing of this took the link down


async def test_a_flood_of_unknown_ids_loses_no_bms_frame(tmp_path: Path) -> None:
    async with running(tmp_path, periodic=False) as rig:
        adapter = rig.adapter
        await until(lambda: adapter.adapter_open, "the gateway opened the adapter")
        for arb, data in good_frames().values():
            assert adapter.frame(arb, data)
        await until(lambda: rig.quality() is Quality.GOOD, "bms good")

        unknown, n, every = [0x100, 0x2A5, 0x7FF], 30_000, 100
        real = [(arb, data, False) for arb, data in good_frames().values()]
        real[1] = (0x355, payload("BMS_SOC", SOC=77), False)
        flood = adapter.flood(unknown, n, real, every)
        await asyncio.to_thread(flood.join)
        sent = {i: adapter.written[i] for i in unknown}
        assert sum(sent.values()) == n  # the flooder did write it all

        # every unknown frame counted against its id, none delivered to anyone
        await until(lambda: rig.link.dropped_by_key() == sent, "the flood counted per id")
        assert rig.link.dropped_ids == {"0x100": 10_000, "0x2A5": 10_000, "0x7FF": 10_000}
        # every real BMS frame arrived: what went out equals what the device took
        slots = {s.arbitration_id: s for s in rig.io.slots.values()}
        await until(lambda: all(s.frames == adapter.written[arb] for arb, s in slots.items()),
                    "every BMS frame received")
        assert all(adapter.written[arb] == 1 + n // every for arb in slots)
        await until(lambda: rig.reading("soc_pct") == (77.0, Quality.GOOD), "SOC from flood")
        assert rig.link.counters["malformed"] == 0
        await polled_more(rig, 1)
        extra = rig.io.stats.extra  # what diagnostics show
        assert extra["bus_dropped_by_id"] == rig.link.dropped_ids
        assert extra["frames"]["BMS_SOC"] == adapter.written[0x355]
        events = rig.daemon.stats()["devices"][rig.io.device_id]["events"]  # status/metrics
        assert events["frames.BMS_SOC"] == adapter.written[0x355]


async def test_a_command_frame_never_carries_a_guess(tmp_path: Path) -> None:
    """The charger's command frame carries power, enable and watchdog together: with the
    status frame all-0xFF, 'enabled' is unknown, so a power write is refused rather than
    sent with a guessed enable bit; an enable write goes out but is not confirmed by an
    invalid read-back."""
    tpl = load_template("dc_charger_can")
    adapter = HostileAdapter(tmp_path / "can0")
    await adapter.start()
    command = tpl.message("EMS_ChargerControl")
    received: list[dict[str, float]] = []
    adapter.subscribe(command.frame_id | EXTENDED, lambda data, ts: received.append(
        command.decode(bytes(data), decode_choices=False)))
    status, power, energy = (tpl.message(n) for n in
                             ("Charger_Status", "Charger_Power", "Charger_Energy"))
    frames = [(status.frame_id, b"\xff" * 8),
              (power.frame_id, bytes(power.encode({"ActivePower": 0, "PowerSetpoint": 0,
                                                   "MaxPower": 50, "WatchdogTimeout": 30}))),
              (energy.frame_id, bytes(energy.encode({"SessionEnergy": 1,
                                                     "TotalEnergy": 100})))]

    async def send() -> None:
        while True:
            if adapter.adapter_open:
                for arb, data in frames:
                    adapter.frame(arb, data, extended=True)
            await asyncio.sleep(0.02)

    cfg = site(tmp_path)
    conn = cfg.connection("rack")
    dev = cfg.devices[0].model_copy(update={"id": "ev1", "nature": "evse",
                                            "template": "dc_charger_can"})
    driver = CanDriver()
    sender = asyncio.create_task(send(), name="hostile charger")
    try:
        io = driver.attach(dev, tpl, conn)
        values = await io.read()
        assert isinstance(values["enabled"], Invalid) and values["p_max_kw"] == 50.0
        with pytest.raises(WriteError, match=r"'p_set_kw' not sent: EMS_ChargerControl also "
                                             r"carries 'enabled', whose reported value True "
                                             r"is invalid \(carried by an all-0xFF"):
            await io.write("p_set_kw", 5.0)
        with pytest.raises(WriteError, match=r"sent 'enabled' = 1 but the device reports "
                                             r"True, which is carried by an all-0xFF"):
            await io.write("enabled", True)
        await until(lambda: len(received) == 1, "the enable frame at the adapter")
        assert received == [{"PowerRequest": 0.0, "Enable": 1, "WatchdogTimeout": 30.0}]
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        await driver.close()
        await adapter.stop()
