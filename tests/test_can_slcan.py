"""CAN over slcan on a pseudo-terminal: no root, no kernel vcan, no network. The daemon
polls a site whose battery speaks Modbus and whose BMS and charger speak CAN, all from
one simulated site; the pty is closed and reopened (link loss and recovery); and the
simulator runs in another process, as `autogrid sim` does."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.base import DeviceOffline, DriverError
from drivers.can.driver import CanDriver
from drivers.template import load_template
from gateway.config.loader import load_config
from gateway.config.models import SiteConfig
from gateway.daemon import Daemon
from gateway.demo import with_ports
from gateway.model import Quality
from sim_devices.runner import SimRunner
from tests.waiting import WAIT_S  # bound on every wait below

REPO = Path(__file__).resolve().parent.parent


def mixed_site(tmp: Path) -> SiteConfig:
    return SiteConfig.model_validate({
        "site": {"name": "slcan", "latitude": 48.0, "longitude": 11.0},
        "gateways": [{"id": "gw1", "api_socket": str(tmp / "api.sock")}],
        "connections": [
            {"id": "lan", "type": "modbus_tcp", "host": "127.0.0.1", "port": 1,
             "timeout_s": 0.5, "reconnect_delay_s": 0.1, "reconnect_delay_max_s": 0.5},
            {"id": "rack", "type": "can", "interface": "slcan",
             "channel": str(tmp / "can0"), "frame_timeout_s": 1.0,
             "reconnect_delay_s": 0.05, "reconnect_delay_max_s": 0.3}],
        "devices": [
            {"id": "battery", "nature": "bess", "template": "generic_bess",
             "connection": "lan", "poll_interval_s": 0.2,
             "ratings": {"capacity_kwh": 10, "p_max_kw": 5, "v_nominal_v": 51.2}},
            {"id": "bms", "nature": "bms", "template": "pylontech_bms_can",
             "connection": "rack", "poll_interval_s": 0.2},
            {"id": "charger", "nature": "evse", "template": "dc_charger_can",
             "connection": "rack", "poll_interval_s": 0.2, "ratings": {"p_max_kw": 50}}],
        "historian": {"enabled": False},
        "simulation": {"seed": 1, "devices": {"bms": {"battery": "battery"}}},
    })


async def until(cond: object, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not cond():  # type: ignore[operator]
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[tuple[SimRunner, Daemon]]:
    cfg = mixed_site(tmp_path)
    runner = SimRunner(cfg, port_overrides={"lan": 0})
    ports = await runner.start()
    runner.endpoints["rack"].set_period_scale(0.1)  # type: ignore[attr-defined]
    daemon = Daemon(with_ports(cfg, {"lan": ports["lan"]}),
                    socket_path=tmp_path / "api.sock")
    try:
        await daemon.start()
        yield runner, daemon
    finally:
        await daemon.shutdown()
        await runner.stop()


def quality(daemon: Daemon, dev: str) -> Quality:
    return daemon.state.devices[dev].health.quality


def value(daemon: Daemon, dev: str, point: str) -> object:
    reading = daemon.state.devices[dev].readings.get(point)
    return None if reading is None else reading.value


async def test_daemon_polls_modbus_and_can_from_one_simulated_site(
        site: tuple[SimRunner, Daemon]) -> None:
    runner, daemon = site
    await until(lambda: all(quality(daemon, d) is Quality.GOOD
                            for d in ("battery", "bms", "charger")), "all devices good")
    # one pack behind both protocols: Modbus bess and CAN BMS show the same SOC
    runner.site.models["battery"].pack.soc_pct = 64.0  # type: ignore[attr-defined]
    await until(lambda: value(daemon, "bms", "soc_pct") == 64.0
                and value(daemon, "battery", "soc_pct") == pytest.approx(64.0, abs=0.1),
                "the new SOC on both protocols")
    # a command through the daemon's device: it arrives with the right value
    back = await daemon.ios["charger"].write("p_set_kw", 11.5)
    assert back == 11.5
    assert runner.site.models["charger"].p_set_kw == 11.5  # type: ignore[attr-defined]
    assert await daemon.ios["bms"].write("i_discharge_max_a", 33.3) == 33.3
    await until(lambda: value(daemon, "bms", "i_discharge_max_a") == 33.3, "the limit")


async def test_pty_closed_link_lost_and_recovered(site: tuple[SimRunner, Daemon],
                                                  tmp_path: Path) -> None:
    runner, daemon = site
    await until(lambda: quality(daemon, "bms") is Quality.GOOD, "bms good")
    link = daemon.drivers["can"].links["can:slcan:" + str(  # type: ignore[attr-defined]
        runner.endpoints["rack"].channel)]  # type: ignore[attr-defined]
    await until(lambda: link.counters["frames"] > 0, "frames counted")
    frames_before = link.counters["frames"]
    await runner.set_fault("bms", "drop")  # the adapter is unplugged: the pty goes away
    assert not (tmp_path / "can0").exists()
    await until(lambda: quality(daemon, "bms") is Quality.OFFLINE
                and quality(daemon, "charger") is Quality.OFFLINE, "CAN devices offline")
    assert quality(daemon, "battery") is Quality.GOOD  # Modbus carries on
    err = daemon.state.devices["bms"].health.last_error or ""
    assert "CAN bus" in err or "no fresh frame" in err
    await runner.clear_fault("bms", "drop")  # plugged in again: a new pty at the same path
    await until(lambda: quality(daemon, "bms") is Quality.GOOD
                and quality(daemon, "charger") is Quality.GOOD, "CAN devices back")
    assert link.stats.reconnects >= 1
    assert link.counters["frames"] > frames_before  # counters run on across reconnects
    # and a command goes through the new link
    assert await daemon.ios["charger"].write("enabled", False) is False
    assert runner.site.models["charger"].enabled is False  # type: ignore[attr-defined]


async def test_garbled_slcan_lines_are_survived(site: tuple[SimRunner, Daemon]) -> None:
    runner, daemon = site
    await until(lambda: quality(daemon, "charger") is Quality.GOOD, "charger good")
    link = next(iter(daemon.drivers["can"].links.values()))  # type: ignore[attr-defined]
    port = runner.endpoints["rack"].port_obj  # type: ignore[attr-defined]
    for line in (b"t35\r", b"tZZZ8\r", b"T18FF50E58AB\r", b"\x00\xff garbage\r", b"x\r"):
        assert port.write_raw(line)
    await runner.set_fault("charger", "garbage")
    await until(lambda: link.counters["malformed"] >= 3, "malformed lines counted")
    await runner.clear_fault("charger")
    polls = daemon.state.devices["charger"].health.polls
    await until(lambda: quality(daemon, "charger") is Quality.GOOD
                and daemon.state.devices["charger"].health.polls > polls + 2,
                "charger polled again")
    assert link.up


SIM_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from gateway.config.loader import load_config
    from sim_devices.runner import SimRunner

    async def main():
        cfg = load_config(sys.argv[1]).config
        runner = SimRunner(cfg)
        await runner.start()
        runner.endpoints["bus"].set_period_scale(0.1)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.stop()

    asyncio.run(main())
""")


async def test_simulator_in_another_process(tmp_path: Path) -> None:
    channel = tmp_path / "can0"
    path = tmp_path / "site.yaml"
    path.write_text(textwrap.dedent(f"""\
        site: {{name: cross-process}}
        gateways: [{{id: gw}}]
        connections:
          - {{id: bus, type: can, interface: slcan, channel: '{channel}',
             frame_timeout_s: 1.0}}
        devices:
          - {{id: bms1, nature: bms, template: pylontech_bms_can, connection: bus,
             ratings: {{capacity_kwh: 5}}}}
          - {{id: ev1, nature: evse, template: dc_charger_can, connection: bus,
             ratings: {{p_max_kw: 22}}}}
        historian: {{enabled: false}}
    """))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SIM_SCRIPT, str(path), cwd=REPO, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    driver = CanDriver()
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(WAIT_S):
            line = await proc.stdout.readline()
        assert line.strip() == b"ready"
        assert channel.is_symlink() and os.readlink(channel).startswith("/dev/pts/")
        cfg = load_config(path).config
        ios = {d.id: driver.attach(d, load_template(d.template), cfg.connection("bus"))
               for d in cfg.devices}
        bms = await ios["bms1"].read()
        assert bms["soc_pct"] == 50.0 and bms["v_pack_v"] > 40  # a 16-cell pack
        ev = await ios["ev1"].read()
        assert ev["p_max_kw"] == 22.0 and ev["state"] in list("ABCDEF")
        assert await ios["ev1"].write("p_set_kw", 4.2) == 4.2
        assert (await ios["ev1"].read())["p_set_kw"] == 4.2
    finally:
        await driver.close()
        async with asyncio.timeout(WAIT_S):
            await proc.communicate(b"")
    assert proc.returncode == 0
    assert not channel.exists()  # the simulator removed its pty link
    # the simulator is gone: the gateway says so, no traceback
    driver = CanDriver()
    try:
        cfg = load_config(path).config
        io = driver.attach(cfg.devices[0], load_template("pylontech_bms_can"),
                           cfg.connection("bus"))
        with pytest.raises(DeviceOffline, match="does not exist"):
            await io.read()
    finally:
        await driver.close()
    assert issubclass(DeviceOffline, DriverError)
