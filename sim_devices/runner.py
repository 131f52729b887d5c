"""Run a site's simulated devices: physics stepping plus one Modbus server per connection.

``SimRunner(cfg).start()`` serves every Modbus device of the site config on 127.0.0.1
(``modbus_serial`` connections are not served: the simulator has no serial port), steps
the physics on a task, checks the device watchdogs, and switches faults at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

from drivers.template import ModbusTemplate
from gateway.config.models import ModbusRtuOverTcp, ModbusTcp, SiteConfig
from gateway.model import PointValue
from sim_devices.can_nodes import attach_can
from sim_devices.clock import ManualClock
from sim_devices.dnp3_server import attach_dnp3
from sim_devices.faults import ENDPOINT_KINDS, Fault, FaultKind, make_fault
from sim_devices.journal import WriteJournal
from sim_devices.modbus_server import HOST, SERVED_TYPES, EndpointServer
from sim_devices.registers import DeviceImage, Generation
from sim_devices.settings import load_simulation_settings

log = logging.getLogger(__name__)


class SiteLike(Protocol):
    """What the runner needs of sim_devices.physics.site.SimSite."""

    models: Any  # dict[str, SimModel]

    def step(self, dt_s: float | None = None) -> Any: ...
    def set_grid(self, available: bool) -> None: ...


def build_site(cfg: SiteConfig) -> SiteLike:
    """The physics of ``cfg`` (sim_devices.physics.site.SimSite)."""
    from sim_devices.physics.site import SimSite  # the physics is heavy; import on demand

    site: SiteLike = SimSite(cfg)
    return site


class SimRunner:
    """The simulated devices of one site config, served on loopback."""

    def __init__(self, cfg: SiteConfig, *, port_overrides: dict[str, int] | None = None,
                 speed: float | None = None, step_s: float = 0.1,
                 site: SiteLike | None = None, host: str = HOST,
                 templates: dict[str, ModbusTemplate] | None = None,
                 journal: WriteJournal | None = None) -> None:
        """``port_overrides`` maps connection id -> port (0 = any free port); ``speed``
        overrides the site clock's speed (simulated seconds per wall second);
        ``step_s`` is the wall time between physics steps;
        ``site`` replaces the physics built from ``cfg`` (tests); ``templates`` adds
        templates by name in front of the built-in ones; ``journal`` records every write
        that reaches a Modbus device model, with its peer (default: as the config's
        ``simulation.write_journal`` says, off without it)."""
        if not step_s > 0:
            raise ValueError(f"step_s must be > 0, found {step_s}")
        self.cfg = cfg
        self.site = site if site is not None else build_site(cfg)
        self.step_s = step_s
        self.speed = speed
        self.generation = Generation()
        self.endpoints: dict[str, EndpointServer] = {}
        self.images: dict[str, DeviceImage] = {}
        self.skipped: dict[str, str] = {}  # device id -> why it is not served
        self._task: asyncio.Task[None] | None = None
        self._faults: dict[str, dict[FaultKind, Fault]] = {}
        self.journal_path: str | None = None
        if journal is None and (cfg.simulation or {}).get("write_journal") is not None:
            wanted = load_simulation_settings(cfg).write_journal
            assert wanted is not None
            journal, self.journal_path = WriteJournal(wanted.per_device), wanted.path
        self.journal = journal
        overrides = port_overrides or {}
        models: dict[str, Any] = dict(self.site.models)
        by_conn: dict[str, list[DeviceImage]] = {}
        library = cfg.template_library()  # built-in and the site's own templates
        for dev in cfg.devices:
            conn = cfg.connection(dev.connection)
            if not dev.enabled:
                self.skipped[dev.id] = "disabled"
                continue
            if conn.type not in SERVED_TYPES:
                self.skipped[dev.id] = (f"connection '{conn.id}' is {conn.type}: the simulator "
                                        f"serves only {', '.join(SERVED_TYPES)}")
                continue
            model = models.get(dev.id)
            if model is None:
                self.skipped[dev.id] = "no physics model"
                continue
            tpl = (templates or {}).get(dev.template) or library.load(dev.template)
            if not isinstance(tpl, ModbusTemplate):
                self.skipped[dev.id] = f"template '{dev.template}' is not a Modbus template"
                continue
            image = DeviceImage(dev.id, dev.unit_id, tpl, model, self.generation)
            self.images[dev.id] = image
            by_conn.setdefault(conn.id, []).append(image)
        for conn_id, images in by_conn.items():
            conn = cfg.connection(conn_id)
            assert isinstance(conn, ModbusTcp | ModbusRtuOverTcp)
            self.endpoints[conn_id] = EndpointServer(conn, images, overrides.get(conn_id), host,
                                                     journal)
        attach_dnp3(self, overrides, host, templates)  # DNP3 outstations, same physics
        attach_can(self, templates)  # CAN nodes on a pty (slcan) or python-can bus
        for dev_id, why in self.skipped.items():
            log.info("not serving %s: %s", dev_id, why)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> dict[str, int]:
        """Listen on every endpoint and start stepping; returns connection id -> port."""
        # One short physics step first, so no client ever reads the all-zero power-on
        # image (a meter at 0 V looks like a lost grid to protection).
        self.step(1e-3)
        try:
            for ep in self.endpoints.values():
                await ep.start()
        except BaseException:
            await self.stop()
            raise
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sim physics")
        return self.ports

    async def stop(self) -> None:
        """Stop stepping and close every server and connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for ep in self.endpoints.values():
            await ep.stop()
        if self.journal is not None and self.journal_path is not None:
            n = self.journal.dump(self.journal_path)
            log.info("write journal: %d rows in %s", n, self.journal_path)

    async def __aenter__(self) -> SimRunner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def ports(self) -> dict[str, int]:
        return {cid: ep.port for cid, ep in self.endpoints.items()}

    # -- physics ------------------------------------------------------------------------

    def step(self, dt_s: float | None = None) -> None:
        """Advance the physics (by ``dt_s`` simulated seconds, or to the site clock's
        now when None) and check the watchdogs; the registers follow on the next read."""
        self.site.step(dt_s)
        self.generation.value += 1
        self.check_watchdogs()

    def check_watchdogs(self) -> list[str]:
        """Devices whose communication watchdog expired just now (they went safe)."""
        now = time.monotonic()
        expired = []
        for dev_id, image in self.images.items():
            check = getattr(image.model, "check_watchdog", None)
            if check is not None and check(now):
                log.warning("%s: no setpoint write within its watchdog: safe defaults", dev_id)
                expired.append(dev_id)
        if expired:
            self.generation.value += 1
        return expired

    async def _run(self) -> None:
        """Step every ``step_s`` wall seconds. A site on a real-time clock steps to its
        clock's now; one on a manual clock (or when ``speed`` is given) is moved by the
        wall time elapsed x speed."""
        clock = getattr(self.site, "clock", None)
        if self.speed is not None and clock is not None and hasattr(clock, "set_speed"):
            clock.set_speed(self.speed)
        by_wall = clock is None or isinstance(clock, ManualClock)
        speed = self.speed or 1.0
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.step_s)
            now = time.monotonic()
            try:
                self.step((now - last) * speed if by_wall else None)
            except Exception:
                log.exception("physics step failed")
            last = now

    def set_grid(self, available: bool) -> None:
        """Lose (False) or restore (True) the utility grid."""
        self.site.set_grid(available)
        self.generation.value += 1

    # -- inspection ---------------------------------------------------------------------

    def devices(self) -> list[dict[str, Any]]:
        """Every configured device: where it is served and which faults it shows."""
        out = []
        for dev in self.cfg.devices:
            image = self.images.get(dev.id)
            ep = self.endpoints.get(dev.connection)
            out.append({
                "id": dev.id, "nature": str(dev.nature), "template": dev.template,
                "connection": dev.connection, "unit_id": dev.unit_id,
                "served": image is not None, "port": ep.port if ep and image else None,
                "skipped": self.skipped.get(dev.id),
                "faults": [f.as_dict() for f in self._faults.get(dev.id, {}).values()],
            })
        return out

    def values(self, device_id: str) -> dict[str, PointValue]:
        """The model's current points (what the registers show unless 'stuck')."""
        return dict(self._image(device_id).model.read_points())

    # -- faults -------------------------------------------------------------------------

    def _image(self, device_id: str) -> DeviceImage:
        image = self.images.get(device_id)
        if image is None:
            why = self.skipped.get(device_id)
            raise KeyError(f"device '{device_id}' is not served"
                           + (f" ({why})" if why else f" (served: {', '.join(self.images)})"))
        return image

    def _endpoint_of(self, device_id: str) -> EndpointServer:
        for ep in self.endpoints.values():
            if device_id in ep.by_device:
                return ep
        raise KeyError(device_id)

    async def set_fault(self, device_id: str, kind: str | FaultKind, **params: Any) -> Fault:
        """Make ``device_id`` show a fault until cleared (replaces one of the same kind).

        ``drop`` and ``refuse`` act on the device's whole endpoint.
        """
        self._image(device_id)
        fault = make_fault(kind, **params)
        self._faults.setdefault(device_id, {})[fault.kind] = fault
        await self._apply(device_id)
        log.info("%s: fault %s set %s%s", device_id, fault.kind, fault.params,
                 " (whole endpoint)" if fault.kind in ENDPOINT_KINDS else "")
        return fault

    async def clear_fault(self, device_id: str, kind: str | FaultKind | None = None
                          ) -> list[str]:
        """Clear one fault kind (or all) of a device; returns the kinds cleared."""
        self._image(device_id)
        faults = self._faults.get(device_id, {})
        if kind is None:
            cleared = list(faults)
            faults.clear()
        else:
            k = make_fault(kind).kind if not isinstance(kind, FaultKind) else kind
            cleared = [k] if faults.pop(k, None) is not None else []
        await self._apply(device_id)
        if cleared:
            log.info("%s: fault %s cleared", device_id, ", ".join(cleared))
        return [str(k) for k in cleared]

    async def clear_all_faults(self) -> None:
        for dev_id in list(self._faults):
            await self.clear_fault(dev_id)

    def faults(self) -> dict[str, list[dict[str, Any]]]:
        """Active faults by device id."""
        return {dev: [f.as_dict() for f in fs.values()]
                for dev, fs in self._faults.items() if fs}

    async def _apply(self, device_id: str) -> None:
        ep = self._endpoint_of(device_id)
        ep.by_device[device_id].faults = dict(self._faults.get(device_id, {}))
        await ep.apply_faults()
