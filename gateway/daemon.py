"""The daemon: wires config, drivers, poller, state, historian and API on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivers.base import DeviceIO, Driver
from drivers.library import TemplateLibrary
from drivers.registry import driver_for_connection_type, get_driver
from gateway import components
from gateway.alarms import AlarmStore, alarms_path
from gateway.api import ApiServer, default_socket_path
from gateway.cluster.config import held_back
from gateway.components import Component
from gateway.config.models import Device, SiteConfig
from gateway.historian import Historian
from gateway.poller import Poller
from gateway.ports import Ports
from gateway.runlock import RunLock, lock_path
from gateway.service.safestop import write_safe_setpoints
from gateway.state import DeviceState, SiteState

log = logging.getLogger("autogrid.daemon")


class ConfigRuntimeError(Exception):
    """The config is valid but cannot be run here (e.g. unknown gateway id)."""


def pick_gateway(cfg: SiteConfig, gateway_id: str | None) -> str:
    ids = [g.id for g in cfg.gateways]
    if gateway_id is None:
        if len(ids) > 1:
            raise ConfigRuntimeError(f"this site has {len(ids)} gateways ({', '.join(ids)}): "
                                     f"say which one this is with --gateway")
        return ids[0]
    if gateway_id not in ids:
        raise ConfigRuntimeError(f"gateway '{gateway_id}' is not in the config "
                                 f"(known: {', '.join(ids)})")
    return gateway_id


def socket_path_for(cfg: SiteConfig, gateway_id: str) -> Path:
    gw = next(g for g in cfg.gateways if g.id == gateway_id)
    return gw.api_socket or default_socket_path(gateway_id)


class Daemon:
    def __init__(self, cfg: SiteConfig, gateway_id: str | None = None,
                 socket_path: Path | None = None, config_dir: Path | None = None) -> None:
        self.cfg = cfg
        # Relative paths the config names for others to read (cluster tls: files) are
        # relative to the config file's directory.
        self.config_dir = (config_dir or Path.cwd()).absolute()
        self.gateway_id = pick_gateway(cfg, gateway_id)
        self.socket_path = socket_path or socket_path_for(cfg, self.gateway_id)
        self.state = SiteState()
        gateway = next(g for g in cfg.gateways if g.id == self.gateway_id)
        self.poller = Poller(self.state, slot_s=gateway.poll_slot_s)
        self.drivers: dict[str, Driver] = {}
        self.ios: dict[str, DeviceIO] = {}
        self.historian: Historian | None = None
        self.ports = Ports()  # typed meeting points of the components (gateway.ports)
        self.api: ApiServer | None = None
        self.started = 0.0
        self.components: list[Component] = []
        self.lock = RunLock(self._lock_path(), self.gateway_id)
        self.stop_problems: list[str] = []  # what the last shutdown could not do cleanly
        self._stop = asyncio.Event()
        self._library: tuple[SiteConfig, TemplateLibrary] | None = None

    def _lock_path(self) -> Path:
        """The run lock lives in the state directory (see gateway.runlock.lock_path)."""
        hist = Path(self.cfg.historian.path) if self.cfg.historian.enabled else None
        ctl = self.cfg.control
        control_db = Path(ctl.state_path) if ctl is not None and ctl.state_path else None
        return lock_path(self.gateway_id, hist and hist.absolute(),
                         control_db and control_db.absolute(), self.socket_path.absolute())

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Bring everything up; on failure, tear down what was started and re-raise.

        The run lock comes first: when another daemon holds it, nothing is touched."""
        self.started = time.time()
        self.lock.acquire()  # AlreadyRunning / LockError: nothing to tear down
        try:
            self._attach_devices()
            if self.cfg.historian.enabled:
                self.historian = Historian(self.cfg.historian)
                await self.historian.start()
                self.state.on_change(self.historian.record)
            self._open_alarms()
            self.api = ApiServer(self.state, self.socket_path, self.gateway_id, self.stats,
                                 self.cfg.api)
            await self.api.start()
            for dev in self.cfg.devices_of(self.gateway_id):
                # a standby-capable device waits for its ownership record (cluster takeover)
                if not held_back(self.cfg.cluster, dev.standby_gateways):
                    self.poller.add(self.ios[dev.id], dev.poll_interval_s)
            for comp in self._build_components():
                await comp.start()
                self.components.append(comp)
        except BaseException:
            await self.shutdown()
            raise
        log.info("gateway %s up: %d devices, API on %s", self.gateway_id, len(self.ios),
                 self.socket_path)

    def _build_components(self) -> list[Component]:
        """The optional parts whose config sections are on (gateway.components)."""
        out: list[Component] = []
        for target in components.FACTORIES:
            gate = components.GATES.get(target)
            if gate is not None and not gate(self.cfg):
                continue  # off by config: its heavy module is not even imported
            module, _, fn = target.partition(":")
            factory: Callable[[Daemon], Component | None] = getattr(
                importlib.import_module(module), fn)
            comp = factory(self)
            if comp is not None:
                out.append(comp)
        return out

    def _open_alarms(self) -> None:
        """Alarms and audit, a service like the historian: on with a ``control:`` section."""
        ctl = self.cfg.control
        if ctl is None:
            return
        hist = Path(self.cfg.historian.path) if self.cfg.historian.enabled else None
        store = AlarmStore(alarms_path(ctl.state_path, hist), self.cfg.api.audit_retention_days,
                           self.cfg.api.audit_max_rows)
        store.open()
        self.ports.alarms = store

    def _attach_devices(self) -> None:
        for dev in self.cfg.devices_of(self.gateway_id):
            io, dev_state = self.attach_device(dev, self.cfg)
            self.ios[dev.id] = io
            self.state.add_device(dev_state)

    def attach_device(self, dev: Device, cfg: SiteConfig) -> tuple[DeviceIO, DeviceState]:
        """Attach one device to its driver (no I/O yet); a config reload uses it too."""
        conn = cfg.connection(dev.connection).for_gateway(self.gateway_id)
        name = driver_for_connection_type(conn.type)
        driver = self.drivers.get(name)
        if driver is None:
            driver = get_driver(name)()
            self.drivers[name] = driver
        tpl = self._templates(cfg).load(dev.template)
        io = driver.attach(dev, tpl, conn)
        return io, DeviceState(
            device_id=dev.id, nature=dev.nature,
            max_age_s=dev.max_age_s or max(3.0 * dev.poll_interval_s, 2.0),
            protocol=conn.type, endpoint=io.endpoint, role=dev.role,
            capacity_kwh=dev.ratings.capacity_kwh)

    def _templates(self, cfg: SiteConfig) -> TemplateLibrary:
        """The config's templates (built-in and site directories), one library per config
        so a reload sees the files as they are then."""
        if self._library is None or self._library[0] is not cfg:
            self._library = (cfg, cfg.template_library())
        return self._library[1]

    def request_stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def shutdown(self) -> None:
        """Stop components, polling, device links; flush the historian; remove the socket."""
        while self.components:
            comp = self.components.pop()
            try:
                await asyncio.wait_for(comp.stop(), 10.0)
            except Exception as exc:  # keep shutting down the rest
                log.warning("stopping %s: %s", comp.name, exc)
        await self.poller.stop()
        # leave devices as configured, before links close
        await write_safe_setpoints(self.cfg.devices_of(self.gateway_id), self.ios, self.state)
        for driver in self.drivers.values():
            try:
                await asyncio.wait_for(driver.close(), 5.0)
            except Exception as exc:  # keep shutting down the rest
                log.warning("closing driver %s: %s", driver.name, exc)
        self.drivers.clear()
        if self.ports.alarms is not None:
            self.ports.alarms.close()
            self.ports.alarms = None
        if self.historian is not None:
            lost = await self.historian.stop()
            if lost:
                self.stop_problems.append(f"{lost} historian rows not written to "
                                          f"{self.historian.path} "
                                          f"({self.historian.last_error})")
            self.historian = None
        if self.api is not None:
            await self.api.stop()
            self.api = None
        self.lock.release()

    async def run(self, install_signals: bool = True) -> None:
        """Start, serve until SIGINT/SIGTERM (or request_stop), shut down cleanly."""
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
            await self.wait()
            log.info("stopping")
        finally:
            await self.shutdown()
            if install_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    with contextlib.suppress(Exception):
                        loop.remove_signal_handler(sig)

    def stats(self) -> dict[str, Any]:
        return {
            "gateway": self.gateway_id,
            "uptime_s": time.time() - self.started,
            "historian": self.historian.stats() if self.historian else None,
            "poller": self.poller.stats(),
            "devices": {d: {"requests": io.stats.requests, "errors": io.stats.errors,
                            "timeouts": io.stats.timeouts, "reconnects": io.stats.reconnects,
                            "last_error": io.stats.last_error,
                            "events": io.stats.counters()}
                        for d, io in self.ios.items()},
        }

