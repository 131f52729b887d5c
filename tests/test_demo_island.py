"""The demo site as shipped can island, for real: the daemon against the demo's simulated
devices over Modbus on loopback. An operator's island request opens the PCC breaker on the
simulated device, the battery forms the island and carries the critical IT rack while
the water heater is shed; reconnect closes the breaker again and restores the heater."""

from __future__ import annotations

from pathlib import Path

from gateway.apiclient import ApiClient
from gateway.config.loader import load_config
from gateway.control.component import ControlComponent
from gateway.daemon import Daemon
from gateway.demo import with_ports
from sim_devices.runner import SimRunner
from tests.test_control_black_start import record_writes
from tests.test_site_configs import SITE_CONFIGS, runnable
from tests.waiting import until


async def test_demo_islands_on_request_and_reconnects(tmp_path: Path) -> None:
    cfg = runnable(load_config(SITE_CONFIGS / "demo.yaml").config, tmp_path)
    assert cfg.control is not None
    pcc = cfg.control.emergency.pcc_breaker
    assert pcc is not None
    runner = SimRunner(cfg, port_overrides={"lan": 0})
    ports = await runner.start()
    daemon = Daemon(with_ports(cfg, ports))
    try:
        await daemon.start()
        comp = next(c for c in daemon.components if isinstance(c, ControlComponent))
        ctl = comp.controller

        def on(dev: str) -> bool:
            return runner.values(dev)["enabled"] is True

        await until(lambda: ctl.cycles > 3 and ctl.grid_ok is True and ctl.forming is False
                    and ctl.modes.mode == "normal", "the demo controlled, grid healthy")
        assert runner.values(pcc)["closed"] is True and runner.site.connected
        writes = record_writes(runner)
        async with ApiClient(daemon.socket_path) as api:
            await api.request("mode_request", mode="island", reason="demo drill")
            await until(lambda: runner.values(pcc)["closed"] is False, "the PCC breaker open")
            assert not runner.site.connected  # the simulated site is off the grid
            await until(lambda: runner.values("battery")["grid_forming"] is True
                        and not on("water_heater"), "battery forming, heater shed")
            await until(lambda: float(runner.values("it_rack")["p_kw"]) > 0.5,
                        "the IT rack supplied by the island")
            assert runner.site.bus.energized and on("it_rack")
            assert ("it_rack", "enabled", False) not in writes  # critical: never shed
            assert float(runner.values("battery")["p_kw"]) > 0 or \
                float(runner.values("pv_roof")["p_kw"]) > 0  # someone carries the island
            assert ctl.modes.mode == "island"

            await api.request("mode_request", mode="reconnect", reason="demo drill over")
            await until(lambda: runner.values(pcc)["closed"] is True, "the PCC breaker closed")
            await until(lambda: ctl.modes.mode == "normal" and on("water_heater"),
                        "back to normal, heater restored")
            assert runner.site.connected
            assert runner.values("battery")["grid_forming"] is False
            assert ("it_rack", "enabled", False) not in writes
        moves = [h["to"] for h in ctl.modes.history]
        assert moves[-3:] == ["island", "reconnect", "normal"], moves
    finally:
        await daemon.shutdown()
        await runner.stop()
