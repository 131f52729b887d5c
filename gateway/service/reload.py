"""Apply a new, valid site config to a running daemon without dropping polls.

Devices are compared by everything that shapes their polling: the device entry, its
connection and its template. Unchanged devices keep their poll task (no gap); removed ones
are stopped and detached; added ones attached and polled; changed ones replaced. New
devices are attached (no I/O) before anything old is touched, so a device that cannot be
attached leaves the running config untouched. Afterwards every component that holds
devices (a ``rebind(report)`` method: control's writer, protection, controller) is re-bound
to the new handles and config, so nothing keeps writing to a detached device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from drivers.base import DeviceIO
from gateway.config.loader import LoadedConfig
from gateway.config.models import Device, SiteConfig
from gateway.state import DeviceState

if TYPE_CHECKING:
    from gateway.daemon import Daemon

log = logging.getLogger("autogrid.service")

# Sections that a reload cannot apply to a running daemon (they need a restart). Control
# re-binds its devices on a reload, but its thresholds and strategies are read at start.
RESTART_SECTIONS = ("gateways", "historian", "metrics", "api", "control", "cluster")


class ReloadError(Exception):
    """The new config is valid but could not be applied; the old one keeps running."""


@dataclass
class ReloadReport:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    need_restart: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"{len(self.unchanged)} devices unchanged"]
        for name, ids in (("added", self.added), ("removed", self.removed),
                          ("replaced", self.replaced)):
            if ids:
                parts.append(f"{name} {', '.join(ids)}")
        return "; ".join(parts)


def _device_key(cfg: SiteConfig, loaded: LoadedConfig, dev: Device) -> tuple[Any, ...]:
    tpl = loaded.templates.get(dev.template)
    return (dev.model_dump(mode="json"),
            cfg.connection(dev.connection).model_dump(mode="json"),
            tpl.model_dump(mode="json") if tpl is not None else dev.template)


def plan(old: LoadedConfig, new: LoadedConfig, gateway_id: str) -> ReloadReport:
    """What a reload from ``old`` to ``new`` would do on gateway ``gateway_id``."""
    before = {d.id: d for d in old.config.devices_of(gateway_id)}
    after = {d.id: d for d in new.config.devices_of(gateway_id)}
    rep = ReloadReport()
    rep.removed = [i for i in before if i not in after]
    rep.added = [i for i in after if i not in before]
    for i in after:
        if i in before:
            same = (_device_key(old.config, old, before[i])
                    == _device_key(new.config, new, after[i]))
            (rep.unchanged if same else rep.replaced).append(i)
    for section in RESTART_SECTIONS:
        if getattr(old.config, section) != getattr(new.config, section):
            rep.need_restart.append(section)
    return rep


async def apply(daemon: Daemon, old: LoadedConfig, new: LoadedConfig) -> ReloadReport:
    """Switch ``daemon`` from ``old`` to ``new``; raise ReloadError and change nothing if a
    new device cannot be attached."""
    rep = plan(old, new, daemon.gateway_id)
    devices = {d.id: d for d in new.config.devices_of(daemon.gateway_id)}
    fresh: dict[str, tuple[DeviceIO, DeviceState]] = {}
    try:
        for dev_id in rep.added + rep.replaced:
            fresh[dev_id] = daemon.attach_device(devices[dev_id], new.config)
    except Exception as exc:
        for io, _ in fresh.values():
            await _close_io(io)
        raise ReloadError(f"cannot attach the new devices: {exc}") from exc
    for dev_id in rep.removed + rep.replaced:
        await daemon.poller.remove(dev_id)
        old_io = daemon.ios.pop(dev_id, None)
        if old_io is not None:
            await _close_io(old_io)
        daemon.state.remove_device(dev_id)
    daemon.cfg = new.config
    for dev_id, (io, dstate) in fresh.items():
        daemon.ios[dev_id] = io
        daemon.state.add_device(dstate)
        daemon.poller.add(io, devices[dev_id].poll_interval_s)
    for comp in daemon.components:
        rebind = getattr(comp, "rebind", None)
        if rebind is not None:
            rebind(rep)
    return rep


async def _close_io(io: DeviceIO) -> None:
    close = getattr(io, "close", None)  # drivers detach a device with io.close()
    if close is not None:
        try:
            await close()
        except Exception as exc:  # a driver bug must not stop the reload half-way
            log.warning("%s: detaching: %s", io.device_id, exc)
