"""`autogrid demo`: the simulated site and the gateway in one process, with a live summary."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

from gateway.config.models import SiteConfig
from gateway.daemon import Daemon
from gateway.export import record_sim_run
from gateway.summary import active_alarms, mode_text, one_line, render, site_time_text

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


def serve_weather_forecast(cfg: SiteConfig, runner: object) -> tuple[object | None, SiteConfig]:
    """Serve the simulator's synthetic day-ahead weather forecast (Open-Meteo JSON) on a free
    loopback port and point the gateway's weather feed at it, so the demo's PV forecast is
    weather-driven like a real site's. Returns the server (None without weather physics)."""
    from gateway.analytics.config import AnalyticsSettings, WeatherFeedSettings

    site = getattr(runner, "site", None)
    weather, clock = getattr(site, "weather", None), getattr(site, "clock", None)
    if weather is None or clock is None:
        return None, cfg
    from sim_devices.weather_endpoint import ForecastServer

    server = ForecastServer(weather, clock.now).start()
    analytics = cfg.analytics or AnalyticsSettings()
    old = analytics.weather_feed or WeatherFeedSettings(url=server.url)
    feed = old.model_copy(update={"url": server.url, "file": None})
    return server, cfg.model_copy(update={"analytics": analytics.model_copy(
        update={"weather_feed": feed})})


def _on_sim_time(daemon: Daemon, runner: object) -> None:
    """EV deadlines, tariffs and every time shown follow the simulated clock, which runs
    faster than ours."""
    clock = getattr(getattr(runner, "site", None), "clock", None)
    if clock is None:
        return
    for comp in daemon.components:
        if comp.name == "control":
            comp.controller.clock = clock.now  # type: ignore[attr-defined]
        if comp.name == "console":
            comp.site_time.use_simulation(clock.now, clock.speed)  # type: ignore[attr-defined]


def picture(daemon: Daemon) -> dict[str, Any]:
    """What `autogrid status` shows, taken in-process: snapshot, mode, alarms, site time."""
    snap: dict[str, Any] = daemon.state.snapshot()
    status = alarms = clock = None
    for comp in daemon.components:
        if comp.name == "control":
            status = {"mode": comp.controller.modes.mode}  # type: ignore[attr-defined]
            alarms = comp.store.listing(active_only=True)  # type: ignore[attr-defined]
        if comp.name == "console":
            clock = comp.site_time.answer()  # type: ignore[attr-defined]
    snap["mode"] = mode_text(status)
    snap["alarms"] = active_alarms(alarms)
    snap["site_time"] = clock
    return snap


def _changes(pic: dict[str, Any]) -> tuple[Any, ...]:
    """What makes a demo without a terminal print at once: health, mode, alarms."""
    return (tuple(sorted(pic["summary"].get("devices", {}).items())), pic.get("mode"),
            tuple(sorted(str(a.get("key")) for a in pic.get("alarms") or [])))


async def run_demo(cfg: SiteConfig, duration_s: float | None = None,
                   interval_s: float | None = None,
                   speed: float | None = None, out: TextIO = sys.stdout) -> None:
    runner, live_cfg = await start_site(cfg, speed)
    wx_server, live_cfg = serve_weather_forecast(live_cfg, runner)
    daemon = Daemon(live_cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tty = out.isatty()
    if interval_s is None:
        interval_s = 1.0 if tty else 10.0
    clock = getattr(getattr(runner, "site", None), "clock", None)
    if clock is not None and live_cfg.historian.enabled:
        # before the first poll, so `autogrid export` puts every sample on this clock
        record_sim_run(Path(live_cfg.historian.path), clock.now(), clock.speed)
    try:
        await daemon.start()
        _on_sim_time(daemon, runner)
        print(f"AutoGrid demo: {len(daemon.ios)} simulated devices on 127.0.0.1, "
              f"API at {daemon.socket_path}. Ctrl-C stops.", file=out, flush=True)
        elapsed = 0.0
        last_line = -interval_s
        seen: tuple[Any, ...] | None = None
        step = interval_s if tty else min(1.0, interval_s)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), step)
            elapsed += step
            pic = picture(daemon)
            if tty:
                page = render(pic, title=f"AutoGrid demo — {cfg.site.name}")
                out.write("\x1b[H\x1b[2J" + page + "\n")
            elif _changes(pic) != seen or elapsed - last_line >= interval_s:
                # Not a terminal (a log, a pipe): one line per change or per interval.
                seen, last_line = _changes(pic), elapsed
                when = site_time_text(pic.get("site_time")) or ""
                out.write(f"{when.split(' (')[0]}  {one_line(pic)}\n")
            out.flush()
            if duration_s is not None and elapsed >= duration_s:
                break
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await daemon.shutdown()
        await runner.stop()  # type: ignore[attr-defined]
        if wx_server is not None:
            wx_server.close()  # type: ignore[attr-defined]
        print("AutoGrid demo stopped: devices closed, historian flushed.", file=out, flush=True)
