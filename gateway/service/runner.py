"""`autogrid run` as a service: READY/STATUS/WATCHDOG to systemd, SIGHUP reload, bounded stop.

The watchdog pings come from a task on the daemon's event loop, so a loop that is stuck
(a blocking call, a busy loop) stops pinging and systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from gateway.aio import cancel_and_wait
from gateway.config.loader import LoadedConfig, load_config, warning_line
from gateway.daemon import ConfigRuntimeError, Daemon, pick_gateway
from gateway.service.notify import Notifier, watchdog_interval_s
from gateway.service.reload import ReloadError, ReloadReport, apply
from gateway.yamlsrc import SourceError

log = logging.getLogger("autogrid.service")

STOP_TIMEOUT_S = 20.0  # the unit's TimeoutStopSec (45 s) is the outer bound
STATUS_INTERVAL_S = 2.0


def status_line(daemon: Daemon) -> str:
    """One line for `systemctl status`: device health and the site's power flow."""
    s = daemon.state.summary()
    counts = s["devices"]
    assert isinstance(counts, dict)
    parts = [f"{len(daemon.state.devices)} devices: {counts['good']} ok, "
             f"{counts['stale']} stale, {counts['offline']} offline"]
    for key, label in (("grid_kw", "grid"), ("pv_kw", "pv"), ("battery_kw", "battery"),
                       ("ev_kw", "ev")):
        v = s.get(key)
        if isinstance(v, int | float):
            parts.append(f"{label} {v:.1f} kW")
    soc = s.get("battery_soc_pct")
    if isinstance(soc, int | float):
        parts.append(f"soc {soc:.0f}%")
    return "; ".join(parts)


class Service:
    """Runs one Daemon under a service manager."""

    def __init__(self, daemon: Daemon, loaded: LoadedConfig, verbose: bool = False,
                 notifier: Notifier | None = None) -> None:
        self.daemon = daemon
        self.loaded = loaded
        self.verbose = verbose
        self.notifier = notifier or Notifier.from_env()
        self.reloads = {"ok": 0, "failed": 0}
        self._tasks: list[asyncio.Task[Any]] = []
        self._reload_lock = asyncio.Lock()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        loop.add_signal_handler(signal.SIGINT, self.daemon.request_stop)
        loop.add_signal_handler(signal.SIGTERM, self.daemon.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            try:
                await self.daemon.start()
            except BaseException as exc:
                self.notifier.send(STATUS=f"failed to start: {exc}")
                raise
            if os.environ.get("AUTOGRID_TEST_HOOKS") == "1":
                from gateway.service.testhooks import install_test_hooks

                install_test_hooks(self.daemon)
            self.notifier.ready(status_line(self.daemon))
            interval = watchdog_interval_s()
            if interval is not None:
                self._tasks.append(asyncio.create_task(self._watchdog(interval),
                                                       name="systemd watchdog"))
            if self.notifier.enabled:  # (the line costs ~1.4 % of the loop at 2000 devices)
                self._tasks.append(asyncio.create_task(self._status(), name="systemd status"))
            await self.daemon.wait()
            log.info("stopping: finishing the current cycle, then safe setpoints, historian "
                     "flush, links closed")
            self.notifier.stopping()
            return await self._stop()
        finally:
            await cancel_and_wait(self._tasks)
            for sig in handled:
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
            self.notifier.close()

    async def _stop(self) -> int:
        t0 = time.monotonic()
        await cancel_and_wait(self._tasks)
        task = asyncio.ensure_future(self.daemon.shutdown())
        done, _ = await asyncio.wait([task], timeout=STOP_TIMEOUT_S)
        if not done:
            await cancel_and_wait([task])
            log.error("stop took longer than %.0f s; exiting anyway", STOP_TIMEOUT_S)
            return 1
        task.result()
        if self.daemon.stop_problems:
            log.error("stopped in %.2f s, not cleanly: %s", time.monotonic() - t0,
                      "; ".join(self.daemon.stop_problems))
        else:
            log.info("stopped cleanly in %.2f s", time.monotonic() - t0)
        return 0

    async def _watchdog(self, interval_s: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval_s)

    async def _status(self) -> None:
        last = ""
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            line = status_line(self.daemon)
            if line != last:
                self.notifier.status(line)
                last = line

    # -- reload ------------------------------------------------------------------------

    def request_reload(self) -> None:
        task = asyncio.create_task(self.reload(), name="config reload")
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def reload(self) -> ReloadReport | None:
        """Re-read the config file; apply it if valid, else keep the running one."""
        async with self._reload_lock:
            path = self.loaded.path
            self.notifier.reloading()
            log.info("reload: reading %s", path)
            try:
                new = await asyncio.to_thread(load_config, path)
                pick_gateway(new.config, self.daemon.gateway_id)
                report = await apply(self.daemon, self.loaded, new)
            except SourceError as exc:
                for problem in exc.problems:
                    log.error("reload: %s", problem)
                self._refused(f"{len(exc.problems)} error(s) in {path}")
                return None
            except (ConfigRuntimeError, ReloadError) as exc:
                log.error("reload: %s", exc)
                self._refused(str(exc))
                return None
            self.loaded = new
            self.reloads["ok"] += 1
            from gateway.logsetup import setup_logging

            setup_logging(new.config.logging, self.verbose)
            log.info("reload: applied: %s", report)
            if report.need_restart:
                log.warning("reload: changes to %s take effect after a restart",
                            ", ".join(report.need_restart))
            self.notifier.ready(status_line(self.daemon))
            return report

    def _refused(self, why: str) -> None:
        self.reloads["failed"] += 1
        log.error("reload refused (%s); the running config is kept", why)
        self.notifier.ready(f"reload refused: {why}; {status_line(self.daemon)}")


def serve(config: str | Path, gateway_id: str | None, socket_path: Path | None,
          verbose: bool = False) -> int:
    """Entry point of `autogrid run`: load, set up logging, run until stopped."""
    from gateway.logsetup import setup_logging

    loaded = load_config(config)
    setup_logging(loaded.config.logging, verbose)
    for w in loaded.warnings:
        log.warning("%s", warning_line(w))
    daemon = Daemon(loaded.config, gateway_id, socket_path,
                    config_dir=loaded.path.resolve().parent)

    async def main() -> int:
        return await Service(daemon, loaded, verbose).run()

    return asyncio.run(main())
