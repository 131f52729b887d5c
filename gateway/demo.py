"""`autogrid demo`: the simulated site and the gateway in one process, with a live summary."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from datetime import UTC, datetime, tzinfo
from typing import TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.config.models import SiteConfig
from gateway.daemon import Daemon
from gateway.summary import render

log = logging.getLogger("autogrid.demo")

_SERVED = ("modbus_tcp", "modbus_rtu_over_tcp", "dnp3_tcp")


def with_ports(cfg: SiteConfig, ports: dict[str, int]) -> SiteConfig:
    """A copy of ``cfg`` whose simulated connections point at the ports actually bound."""
    conns = [c.model_copy(update={"port": ports[c.id], "host": "127.0.0.1"})
             if c.id in ports else c for c in cfg.connections]
    return cfg.model_copy(update={"connections": conns})


async def start_site(cfg: SiteConfig, speed: float | None = None) -> tuple[object, SiteConfig]:
    """Start the simulators on free loopback ports; return the runner and the patched config."""
    from sim_devices.runner import SimRunner

    overrides = {c.id: 0 for c in cfg.connections if c.type in _SERVED}
    runner = SimRunner(cfg, port_overrides=overrides, speed=speed)
    ports = await runner.start()
    return runner, with_ports(cfg, ports)


def _control_on_sim_time(daemon: Daemon, runner: object) -> None:
    """EV deadlines and tariffs follow the simulated clock, which runs faster than ours."""
    clock = getattr(getattr(runner, "site", None), "clock", None)
    for comp in daemon.components:
        if comp.name == "control" and clock is not None:
            comp.controller.clock = clock.now  # type: ignore[attr-defined]


def _sim_time_line(runner: object, cfg: SiteConfig) -> str:
    """The simulated site's own clock (it runs faster than the wall clock above)."""
    clock = getattr(getattr(runner, "site", None), "clock", None)
    if clock is None:
        return ""
    try:
        tz: tzinfo = ZoneInfo(cfg.site.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        tz = UTC
    when = datetime.fromtimestamp(clock.now(), tz=tz)
    return (f"\n\nSimulated site time  {when:%Y-%m-%d %H:%M} {when:%Z} "
            f"({clock.speed:g}x real time)")


def _control_line(daemon: Daemon) -> str:
    """Mode, active alarms and setpoints, when site control runs."""
    for comp in daemon.components:
        if comp.name != "control":
            continue
        c = comp.controller  # type: ignore[attr-defined]
        alarms = comp.store.listing(active_only=True)  # type: ignore[attr-defined]
        sp = ", ".join(f"{d}.{p}={v:.1f}" if isinstance(v, float) else f"{d}.{p}={v}"
                       for d, pts in sorted(c.last.items()) for p, v in pts.items())
        text = f"\n\nControl  mode {c.modes.mode}, {len(alarms)} active alarm(s)"
        for a in alarms[:3]:
            text += f"\n  [{a['severity']}] {a['source']}: {a['message']}"
        return text + (f"\n  setpoints: {sp}" if sp else "")
    return ""


async def run_demo(cfg: SiteConfig, duration_s: float | None = None, interval_s: float = 1.0,
                   speed: float | None = None, out: TextIO = sys.stdout) -> None:
    runner, live_cfg = await start_site(cfg, speed)
    daemon = Daemon(live_cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tty = out.isatty()
    try:
        await daemon.start()
        _control_on_sim_time(daemon, runner)
        print(f"AutoGrid demo: {len(daemon.ios)} simulated devices on 127.0.0.1, "
              f"API at {daemon.socket_path}. Ctrl-C stops.", file=out, flush=True)
        elapsed = 0.0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
            elapsed += interval_s
            page = render(daemon.state.snapshot(), title=f"AutoGrid demo — {cfg.site.name}")
            page += _sim_time_line(runner, cfg)
            page += _control_line(daemon)
            if tty:
                out.write("\x1b[H\x1b[2J" + page + "\n")
            else:
                out.write(page + "\n\n")
            out.flush()
            if duration_s is not None and elapsed >= duration_s:
                break
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await daemon.shutdown()
        await runner.stop()  # type: ignore[attr-defined]
        print("AutoGrid demo stopped: devices closed, historian flushed.", file=out, flush=True)
