"""The cluster component of the daemon (``backend: etcd``): the gateways of a site as one.

- Leadership: only the leader runs the site controller (the control component asks
  ``leading()`` every cycle); protection stays local on every gateway.
- The leader writes each cycle's setpoints (and one-shot commands) fenced into the store,
  ``setpoints/<device>`` with writer, term and time; a refused write steps it down and is
  alarmed, never claimed.
- Every gateway watches ``setpoints/`` and ``commands/`` and hands those of the devices it
  owns to its own applier (clamp, read-back, rewrite), and writes what the device took to
  ``reports/<device>``; the leader feeds remote reports to its controller. An operator's
  breaker command on a device another gateway polls carries an id and is run there at
  most once: :mod:`gateway.cluster.commands`.
- Readings: see :mod:`gateway.cluster.telemetry`.
- A new leader starts from the committed setpoints in the store (no jump).

With ``backend: standalone`` (or no ``cluster:`` section) there is no component: a single
gateway controls its devices directly, exactly as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cluster.config import endpoint_of
from gateway.cluster.hooks import unhook
from gateway.cluster.sitewide import SiteWide
from gateway.cluster.store import Change, ClusterStore, FencedWrite, Value
from gateway.cluster.telemetry import Telemetry, remote_device_state

if TYPE_CHECKING:
    from gateway.daemon import Daemon

log = logging.getLogger("autogrid.cluster")
# A committed setpoint older than this (a store read after every gateway was down) is not
# applied: the leader's next cycle says what holds now.
SETPOINT_MAX_AGE_S = 60.0


class ClusterComponent:
    name = "cluster"

    def __init__(self, daemon: Daemon, store: ClusterStore) -> None:
        self.daemon = daemon
        self.store = store
        self.gateway = daemon.gateway_id
        cfg = daemon.cfg
        self.own = [d.id for d in cfg.devices_of(self.gateway)]
        self.remote = {d.id: (d.gateway or cfg.gateways[0].id) for d in cfg.devices
                       if d.enabled and d.id not in self.own}
        self.telemetry = Telemetry(store, daemon.state, self.own, self.remote,
                                   daemon.ports.alarms)
        self.acked: deque[dict[str, Any]] = deque(maxlen=10_000)  # committed writes
        self.refusals: deque[dict[str, Any]] = deque(maxlen=1000)
        self.acks_path: Path = daemon.lock.path.parent / f"{self.gateway}.cluster-acks.jsonl"
        self.applied_term: dict[str, int] = {}  # device -> highest term applied here
        self.applied: dict[str, tuple[int, dict[str, Any]]] = {}  # device -> (rev, points)
        self._pending: tuple[dict[str, dict[str, Any]], list[tuple[str, str, Any]]] | None = None
        self._wake = asyncio.Event()
        self._leading = asyncio.Event()  # set while this gateway leads
        self._reports: dict[str, Value] = {}
        self._report_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubs: list[Any] = []
        self._seq = 0
        self.seeded: tuple[int | None, dict[str, Any]] | None = None  # (term, setpoints)
        self.sitewide = SiteWide(self)  # forwarded commands, mode/overrides/audit stored
        self.on_report: list[Any] = []  # listeners of remote devices' write outcomes
        from gateway.cluster.takeover import Takeover
        self.takeover = Takeover(self)  # standby_gateways: who polls which device
        from gateway.cluster.commands import RemoteCommands
        self.commands = RemoteCommands(self)  # operators' breaker commands, other gateways
        daemon.ports.cluster = self

    # -- life cycle --------------------------------------------------------------------------
    async def start(self) -> None:
        for dev_id, gw in self.remote.items():
            if dev_id not in self.daemon.state.devices:
                self.daemon.state.add_device(remote_device_state(self.daemon.cfg, dev_id, gw))
        await self.takeover.detach_configured()
        await self.store.start()
        self._unsubs = [self.store.on_leadership(self._leadership),
                        self.store.watch_prefix("setpoints/", self._on_setpoint),
                        self.store.watch_prefix("commands/", self._on_command),
                        self.store.watch_prefix("reports/", self._on_report)]
        applier = self.daemon.ports.applier
        if applier is not None:
            applier.on_outcome.append(self._outcome)
        self.sitewide.start()
        self.commands.start()
        self.telemetry.start()
        self.takeover.start()
        if self.daemon.api is not None:
            self.daemon.api.register("cluster", lambda _r, _c: self.status(), role="viewer",
                                     help="cluster: leader, term, lease age, this gateway's "
                                          "devices, gateways gone")
        self._tasks = [asyncio.create_task(self._dispatch_loop(), name="cluster dispatch"),
                       asyncio.create_task(self._report_loop(), name="cluster reports"),
                       asyncio.create_task(self._reach_loop(), name="cluster reach")]

    async def stop(self) -> None:
        unhook(self._unsubs, self.daemon, self._outcome)
        await self.sitewide.stop()
        await self.commands.stop()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        await self.takeover.stop()
        await self.telemetry.stop()
        await self.store.stop()  # leading() is False from here on: control stays off

    def rebind(self, _rep: object) -> None:
        """A config reload: which devices are this gateway's and which the others' (a
        device now remote is held offline until its gateway publishes it)."""
        cfg = self.daemon.cfg
        self.own[:] = [d.id for d in cfg.devices_of(self.gateway)]
        self.remote.clear()
        self.remote.update({d.id: (d.gateway or cfg.gateways[0].id) for d in cfg.devices
                            if d.enabled and d.id not in self.own})
        self.telemetry.own_set = set(self.own)
        self.takeover.rebind()
        for dev_id, gw in self.remote.items():
            if dev_id not in self.daemon.state.devices:
                self.daemon.state.add_device(remote_device_state(cfg, dev_id, gw))

    # -- leadership --------------------------------------------------------------------------
    def leading(self) -> bool:
        """True while this gateway leads (and has read the committed setpoints)."""
        return self.store.is_leader and self._leading.is_set()

    def leader_id(self) -> str | None:
        return self.store.leader

    def polled_elsewhere(self, dev_id: str) -> str | None:
        """The gateway that polls ``dev_id`` when it is not this one."""
        return self.remote.get(dev_id)

    def site_alarms(self, own: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.sitewide.site_alarms(own)

    def follower_status(self, status: dict[str, Any]) -> dict[str, Any]:
        return self.sitewide.follower_status(status)

    async def forward(self, cmd: str, req: dict[str, Any], caller: Any,
                      to: str | None = None) -> Any:
        """An operator command given here, run by the leader or by gateway ``to``."""
        return await self.sitewide.forward(cmd, req, caller, to)

    async def command(self, dev_id: str, point: str, value: Any, user: str
                      ) -> dict[str, Any]:
        """The leader: an operator's one-shot command on a device another gateway polls,
        run there once (:mod:`gateway.cluster.commands`); the reply is what it took."""
        return await self.commands.send(dev_id, point, value, user)

    async def wait_leading(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for this gateway to lead; True when it does."""
        if not self.leading():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._leading.wait(), max(0.0, timeout_s))
        return self.leading()

    def _leadership(self, is_leader: bool, term: int | None) -> None:
        alarms = self.daemon.ports.alarms
        self._leading.clear()  # (gained: set once seeded from the committed setpoints)
        self._pending = None
        if is_leader:
            self.sitewide.became_leader()
            self._tasks.append(asyncio.create_task(self._seed(term), name="cluster seed"))
            if alarms is not None:
                alarms.clear("cluster", "fenced")
                alarms.audit("cluster", "leader", {"gateway": self.gateway, "term": term})

    async def _seed(self, term: int | None) -> None:
        """A new leader starts from the committed setpoints, as if its last cycle had
        chosen them one cycle ago (ramps go on from there, no jump); only then does its
        controller run (``leading()``)."""
        ctl = self.daemon.ports.controller
        last: dict[str, dict[str, Any]] = {}
        try:
            if ctl is not None:
                entries = await self.store.get_prefix("setpoints/")
                last = {e.key.removeprefix("setpoints/"): dict(e.value.get("points") or {})
                        for e in entries}
            await self.sitewide.take_over()  # mode and overrides held across failover
        except Exception as exc:  # the store is away: the fenced writes will say so
            log.warning("new leader could not read the committed setpoints: %s", exc)
        if not self.store.is_leader or self.store.term != term:
            return  # lost it meanwhile
        if ctl is not None and last:
            ctl.last = last
            cycle = getattr(getattr(self.daemon.cfg, "control", None), "cycle_s", 1.0)
            ctl.last_now = ctl.clock() - cycle if hasattr(ctl, "clock") else None
        self.seeded = (term, last)
        log.info("leader (term %s) starts from %d committed setpoints", term, len(last))
        self._leading.set()

    async def _reach_loop(self) -> None:
        """While this gateway cannot renew its lease (its etcd member is down, or on the
        minority side of a partition) an alarm says what that means here."""
        while True:
            await asyncio.sleep(0.5)
            self.reach_alarm()

    def reach_alarm(self) -> None:
        alarms = self.daemon.ports.alarms
        failing = getattr(self.store, "keepalive_failures", 0)
        if alarms is None:
            return
        if failing:
            alarms.raise_("cluster", "unreachable", "critical",
                          f"gateway {self.gateway} cannot renew its cluster lease "
                          f"({failing} keepalives failed): it cannot lead or publish; "
                          f"protection goes on here, its devices keep their last setpoints "
                          f"until their own watchdogs revert them")
        else:
            alarms.clear("cluster", "unreachable")

    # -- the leader's writes -----------------------------------------------------------------
    def dispatch(self, setpoints: dict[str, dict[str, Any]],
                 commands: list[tuple[str, str, Any]]) -> None:
        """Hand a cycle's setpoints and commands to the writer (latest cycle wins while a
        write is out; commands are never dropped)."""
        if self._pending is not None:
            commands = self._pending[1] + commands
        self._pending = (setpoints, commands)
        self._wake.set()

    async def _dispatch_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, None
            if pending is None or not self.store.is_leader:
                continue
            setpoints, commands = pending
            term, now = self.store.term, time.time()
            items: dict[str, Value] = {}
            for dev, points in setpoints.items():
                items[f"setpoints/{dev}"] = {"points": points, "writer": self.gateway,
                                             "term": term, "at": now}
            for dev, point, value in commands:
                self._seq += 1
                items[f"commands/{dev}"] = {"point": point, "value": value,
                                            "writer": self.gateway, "term": term, "at": now,
                                            "seq": self._seq}
            items.update(self.sitewide.site_items())
            if not items:
                continue
            t0 = time.perf_counter()
            res = await self.store.fenced_put(items)
            self._record(res, sorted(items), (time.perf_counter() - t0) * 1000.0)
            self.sitewide.committed(res.ok, list(items))
            if not res.ok and res.unknown and commands:
                # Not known to be committed: carry the commands into the next write
                # (they are idempotent: trip, close, zero).
                later = self._pending
                self._pending = (later[0] if later else {},
                                 commands + (later[1] if later else []))

    def _record(self, res: FencedWrite, keys: list[str], ms: float) -> None:
        alarms = self.daemon.ports.alarms
        if res.ok:
            row = {"revision": res.revision, "term": res.term, "keys": keys,
                   "writer": self.gateway, "at": time.time(), "ms": round(ms, 3)}
            self.acked.append(row)
            with contextlib.suppress(OSError), self.acks_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            return
        row = {"term": res.term, "reason": res.reason, "unknown": res.unknown,
               "at": time.time(), "keys": keys}
        self.refusals.append(row)
        if alarms is not None and not res.unknown:
            alarms.raise_("cluster", "fenced", "warning",
                          f"gateway {self.gateway} (term {res.term}) could not write "
                          f"setpoints: {res.reason}; it no longer runs the site controller")
        log.warning("setpoint write (term %s) not committed: %s", res.term, res.reason)

    # -- every gateway: apply what concerns its own devices ----------------------------------
    def _fresh(self, dev: str, value: Value) -> bool:
        term = value.get("term")
        if not isinstance(term, int) or dev not in self.own:
            return False
        if term < self.applied_term.get(dev, 0):
            return False  # an older term's write (cannot commit under fencing; be sure)
        self.applied_term[dev] = term
        return True

    def _on_setpoint(self, ch: Change) -> None:
        dev = ch.key.removeprefix("setpoints/")
        if ch.value is None or not self._fresh(dev, ch.value):
            return
        at = ch.value.get("at")
        if not isinstance(at, int | float) or time.time() - at > SETPOINT_MAX_AGE_S:
            log.info("%s: setpoint of term %s from %s not applied: too old", dev,
                     ch.value.get("term"), at)
            return
        points = ch.value.get("points")
        applier = self.daemon.ports.applier
        if not isinstance(points, dict) or applier is None:
            return
        self.applied[dev] = (ch.revision, points)
        applier.submit({dev: points})

    def _on_command(self, ch: Change) -> None:
        dev = ch.key.removeprefix("commands/")
        if ch.value is not None and "id" in ch.value and dev in self.own:
            self.commands.on_command(dev, ch.value)  # an operator's: once, or said why not
            return
        if ch.value is None or not self._fresh(dev, ch.value):
            return
        if time.time() - float(ch.value.get("at") or 0.0) > SETPOINT_MAX_AGE_S:
            return  # an old command read at start: long done or long moot
        applier = self.daemon.ports.applier
        point = ch.value.get("point")
        if applier is not None and isinstance(point, str):
            applier.command(dev, point, ch.value.get("value"))

    def _outcome(self, o: Any) -> None:
        """A write to one of this gateway's devices came back: report it (coalesced)."""
        if o.device not in self.own:
            return
        self._reports[o.device] = {"point": o.point, "value": o.value, "ok": o.ok,
                                   "read_back": o.read_back, "error": o.error, "at": o.at,
                                   "gateway": self.gateway, "command": o.command}
        self._report_wake.set()

    async def _report_loop(self) -> None:
        while True:
            await self._report_wake.wait()
            self._report_wake.clear()
            reports, self._reports = self._reports, {}
            for dev, value in reports.items():
                try:
                    await self.store.put(f"reports/{dev}", value)
                except Exception as exc:  # the store is away: the next outcome retries
                    log.debug("report for %s not written: %s", dev, exc)
            await asyncio.sleep(0.05)

    def _on_report(self, ch: Change) -> None:
        """The leader hears what a remote device took (or did not)."""
        dev = ch.key.removeprefix("reports/")
        ctl = self.daemon.ports.controller
        if ch.value is None or dev in self.own or not self.store.is_leader or ctl is None:
            return
        from gateway.control.applier import WriteOutcome
        v = ch.value
        try:
            out = WriteOutcome(dev, str(v["point"]), v["value"], bool(v["ok"]),
                               float(v["at"]), read_back=v.get("read_back"),
                               error=v.get("error"), command=bool(v.get("command")))
        except (KeyError, TypeError, ValueError):
            log.debug("malformed report for %s skipped", dev)
            return
        ctl.outcome(out)
        for listener in list(self.on_report):  # e.g. an override's reply waiting for it
            listener(out)

    def status(self) -> dict[str, Any]:
        ages = sorted(self.telemetry.ages_s)
        return {**self.store.status(), "own": self.own,
                "gone": dict(self.telemetry.gone), "acked": len(self.acked),
                "refusals": list(self.refusals)[-5:], "takeover": self.takeover.status(),
                "commands": self.commands.status(),
                "remote_age_s_p50": ages[len(ages) // 2] if ages else None,
                "remote_age_s_p99": ages[min(len(ages) - 1, int(0.99 * len(ages)))]
                if ages else None}


def build(daemon: Daemon) -> ClusterComponent | None:
    cl = daemon.cfg.cluster
    if cl is None or cl.backend != "etcd":
        return None
    from gateway.daemon import ConfigRuntimeError
    member = cl.member(daemon.gateway_id)
    if member is None:
        raise ConfigRuntimeError(f"cluster: no etcd member for gateway {daemon.gateway_id}")
    from gateway.cluster.etcd_store import EtcdStore
    from gateway.cluster.tlsclient import client_for

    gw, config_dir = daemon.gateway_id, daemon.config_dir
    try:
        client_for(cl, gw, config_dir=config_dir)  # (https without tls: and the like)
    except ValueError as exc:
        raise ConfigRuntimeError(f"cluster: {exc}") from None
    others: list[tuple[tuple[str, int], Any]] = []
    if cl.switch_members:  # the other members, to go on through when its own is down
        others = [(endpoint_of(m.client_url), functools.partial(
            client_for, cl, gw, config_dir=config_dir, member_of=m.gateway))
            for m in cl.members if m.gateway != gw]
    store = EtcdStore(gw, endpoint_of(member.client_url), cl.prefix, cl.lease_ttl_s,
                      client_factory=lambda: client_for(cl, gw, config_dir=config_dir),
                      others=others)
    return ClusterComponent(daemon, store)
