"""The control component of the daemon: protection on every sample, the site controller
on a fixed cycle in one task, the setpoint applier, alarms and audit (SQLite next to the
historian), and the control API commands. Present when the config has a ``control:``
section; ``build(daemon)`` is its factory in gateway.components.FACTORIES.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from gateway.aio import cancel_and_wait
from gateway.control.applier import Applier
from gateway.control.config import reference_problems
from gateway.control.controller import Controller
from gateway.control.protection import Protection

if TYPE_CHECKING:
    from gateway.alarms import AlarmStore
    from gateway.daemon import Daemon
    from gateway.historian import Historian
    from gateway.service.reload import ReloadReport

log = logging.getLogger("autogrid.control")
STALE_CHECK_S = 0.25


class ControlComponent:
    name = "control"

    def __init__(self, daemon: Daemon) -> None:
        cfg = daemon.cfg
        assert cfg.control is not None
        problems = reference_problems(cfg.control, {d.id: str(d.nature) for d in cfg.devices})
        if problems:
            from gateway.daemon import ConfigRuntimeError
            raise ConfigRuntimeError("; ".join(problems))
        self.daemon = daemon
        self.control = cfg.control
        store = daemon.ports.alarms  # the daemon's alarm service (on with `control:`)
        assert store is not None, "the daemon opens alarms before control starts"
        self.store = store
        self.controller = Controller(cfg, self.control)
        daemon.ports.controller = self.controller
        self.applier = Applier(daemon.ios, daemon.state, self.store, self.control.rewrite_s,
                               {d.id: d.control.deadband_kw for d in cfg.devices if d.control})
        self.controller.confirm_writes = True
        self.applier.on_outcome.append(self.controller.outcome)
        daemon.ports.applier = self.applier
        self.protection = Protection(cfg, self.control.protection, daemon.state, self.store,
                                     self.applier.command, self.controller.lockouts,
                                     self._grid_loss, self.controller.derates)
        self.cycle_ms: deque[float] = deque(maxlen=5000)
        self.lateness_ms: deque[float] = deque(maxlen=5000)
        self._tasks: list[asyncio.Task[None]] = []
        self.skipped_cycles = 0  # slots the cycle loop skipped because a cycle overran
        self._overrunning = False

    def _grid_loss(self, why: str) -> str:
        """Protection saw the grid go: island now (the PCC trip is sent at once and
        retried until confirmed). Returns what was done, for the alarm: never claims an
        island where there is no PCC breaker to open."""
        c = self.controller
        pcc = self.control.emergency.pcc_breaker
        if pcc is None:
            return "no PCC breaker configured, site not islanded: alarm only"
        if not self.control.protection.grid_loss_trip:
            return "grid_loss_trip is off, site not islanded: alarm only"
        if c.modes.mode != "normal":
            return f"site already in {c.modes.mode} mode: no new action"
        c.grid_ok = False
        want = c.grid_lost_mode()
        refused = c.request_mode(want, f"protection: {why}")
        if refused is not None:
            return f"{want} refused: {refused}"
        sent = [f"{point} sent to {dev}" for dev, point, _ in c.pending_commands]
        for dev, point, value in c.pending_commands:
            self.applier.command(dev, point, value)
        c.pending_commands = []
        self._mode_changed()
        what = "islanding" if want == "island" else "site dark: black start from the battery"
        return f"{what} ({', '.join(sent) or 'no breaker command'}; confirmation pending)"

    async def start(self) -> None:
        if self.daemon.api is not None:
            from gateway.control.api_commands import register
            register(self, self.daemon.api)
            self.daemon.api.audit_sink = self.store.audit  # refusals are audited too
        self.protection.attach()
        self.store.audit("daemon", "control_start", {"controller": self.control.controller,
                                                     "cycle_s": self.control.cycle_s})
        self._tasks.append(asyncio.create_task(self._stale_loop(), name="protection stale"))
        if self.control.controller:
            self._tasks.append(asyncio.create_task(self._cycle_loop(), name="site controller"))

    async def stop(self) -> None:
        self.protection.detach()
        await cancel_and_wait(self._tasks)
        self._tasks = []
        await self.applier.stop()

    def rebind(self, rep: ReloadReport) -> None:
        """A config reload swapped device handles and config: the applier writes through
        the new handles (and writes everything afresh to a replaced device), controller
        and protection use the new devices' ratings and drop removed devices."""
        cfg = self.daemon.cfg
        for dev_id in rep.replaced + rep.removed:
            self.applier.forget(dev_id)
        self.applier.deadband_kw = {d.id: d.control.deadband_kw for d in cfg.devices
                                    if d.control}
        self.controller.rebind(cfg)
        self.protection.rebind(cfg)

    async def _stale_loop(self) -> None:
        while True:
            await asyncio.sleep(STALE_CHECK_S)
            self.protection.check_stale()
            historian_alarm(self.store, self.daemon.historian)

    def run_cycle(self) -> None:
        """One cycle: compute and hand to the applier (which writes in the background)."""
        c = self.controller
        cluster = self.daemon.ports.cluster
        if cluster is not None and not cluster.leading():
            return  # another gateway leads the site; protection stays on here
        t0 = time.perf_counter()
        try:
            before = (c.modes.mode, len(c.modes.history))
            res = c.cycle(self.daemon.state, c.clock(), time.time())
            if (c.modes.mode, len(c.modes.history)) != before:
                self._mode_changed()
            if cluster is not None:  # fenced into the store; each owner applies its own
                cluster.dispatch(res.setpoints, res.commands)
            else:
                for dev, point, value in res.commands:  # one-shot, retried until confirmed
                    self.applier.command(dev, point, value)
                self.applier.submit(res.setpoints)
            if res.problems:
                self.store.raise_("controller", "non_finite", "warning",
                                  "; ".join(res.problems))
            elif self.store.is_active("controller", "non_finite"):
                self.store.clear("controller", "non_finite")
        except Exception:  # a strategy bug must not stop the cycle (or protection)
            log.exception("control cycle failed")
            self.store.raise_("controller", "cycle", "warning", "control cycle failed; "
                              "see the log")
        self.cycle_ms.append((time.perf_counter() - t0) * 1000.0)

    def _mode_changed(self) -> None:
        """Every mode change is audited; a site not in normal operation is an alarm."""
        m = self.controller.modes
        last = m.history[-1] if m.history else {"from": None, "to": m.mode, "reason": ""}
        self.store.audit("controller", "mode", {"from": last["from"], "to": last["to"],
                                                "reason": last["reason"]})
        if m.mode == "normal":
            self.store.clear("site", "mode")
        else:
            self.store.raise_("site", "mode", "critical" if m.mode in ("estop", "island")
                              else "warning", f"site in {m.mode} mode: {m.reason}")

    async def _cycle_loop(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.control.cycle_s
        due = loop.time()
        while True:
            self.lateness_ms.append(max(0.0, loop.time() - due) * 1000.0)
            self.run_cycle()
            due += period
            now = loop.time()
            if due < now:  # overran: skip the missed slots, keep the phase, say so once
                missed = int((now - due) // period) + 1
                due += missed * period
                if not self._overrunning:
                    log.warning("control cycle overran its %.0f ms slot: %d cycle(s) skipped",
                                period * 1000.0, missed)
                self._overrunning = True
                self.skipped_cycles += missed
            elif self._overrunning:
                self._overrunning = False
                log.info("control cycles on time again (%d skipped in all)",
                         self.skipped_cycles)
            cluster = self.daemon.ports.cluster
            if cluster is not None and not cluster.leading():
                # a gateway that becomes the cluster leader runs its first cycle at once
                if await cluster.wait_leading(due - now):
                    due = loop.time()
                continue
            await asyncio.sleep(due - now)

    def stats(self) -> dict[str, Any]:
        def pct(xs: deque[float], q: float) -> float | None:
            s = sorted(xs)
            return s[min(len(s) - 1, int(q * len(s)))] if s else None
        return {"cycles": self.controller.cycles,
                "cycle_ms_p50": pct(self.cycle_ms, 0.5), "cycle_ms_p99": pct(self.cycle_ms, 0.99),
                "lateness_ms_p50": pct(self.lateness_ms, 0.5),
                "lateness_ms_p99": pct(self.lateness_ms, 0.99),
                "skipped_cycles": self.skipped_cycles,
                "applier": self.applier.stats(), "protection": self.protection.status()}


def historian_alarm(store: AlarmStore, historian: Historian | None) -> None:
    """While the historian cannot write (disk full, unwritable path), an alarm says so,
    with the path and the rows lost so far; cleared when writes succeed again. Likewise
    while it cannot merge its staged rows (nothing is lost then: a warning)."""
    if historian is None:
        return
    if historian.merge_error is None:
        store.clear("historian", "merge")
    else:  # the rows stay staged and readable; the merge is retried
        store.raise_("historian", "merge", "warning",
                     f"{historian.merge_error}: cannot merge {historian.staged} staged rows "
                     f"into the history of {historian.path}; they stay staged and readable, "
                     f"the merge is retried")
    if historian.last_error is None:
        store.clear("historian", "write")
        return
    what = "disk full" if historian.disk_full else historian.last_error
    store.raise_("historian", "write", "critical" if historian.disk_full else "warning",
                 f"{what}: cannot write {historian.path}; {historian.dropped} rows lost so "
                 f"far, newer rows kept in memory and retried; polling goes on")


def build(daemon: Daemon) -> ControlComponent | None:
    return ControlComponent(daemon) if daemon.cfg.control is not None else None
