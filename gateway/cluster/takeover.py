"""Device takeover by ``standby_gateways``: which gateway polls and writes a device is a
fenced key in the store, and only its holder touches the device.

Keys (relative to the site prefix):

- ``owners/<device>``: ``{gateway, lease, since, term, why, pinned}``, written only by the
  leader in a transaction fenced on its term. ``lease`` is the holder's lease id when the
  record was written.
- ``live/<gateway>``: ``{lease, since, holding}``, published by each gateway on its own
  lease (it goes when the lease ends): which standby-capable devices it polls now.

The rule that keeps two gateways from ever poll-writing one device:

1. A gateway polls a standby-capable device only while ``owners/<device>`` names it *with
   its current lease*, and only once no other live gateway lists the device in ``holding``
   (the old holder has let go first: it stopped polling, dropped its write intents and
   waited for a write in flight, then published ``holding`` without the device).
2. A gateway drops every standby-capable device it polls as soon as it has not renewed its
   lease for ``DROP_SHARE`` of the TTL (counted from when its last renewal that held was
   sent), whether or not it can reach the store. So a cut-off gateway has let go before its
   lease can expire at etcd, which is the first moment the leader sees it gone and hands
   its devices over. A gateway that got a new lease holds nothing until the leader writes
   a record with that lease.
3. The leader moves a device only away from a gateway whose ``live`` key is gone, by
   handback (the configured owner has been live ``cluster.handback_after_s``), or by an
   operator's ``device_move`` (given on any gateway: one that does not lead forwards it
   to the leader); for the latter two the new holder waits for rule 1.

Devices without ``standby_gateways`` are not affected: their owner polls them as before.
Until a leader has written its first record, a standby-capable device is not polled (the
leader does that within a cycle of the owner being up).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.base import DeviceIO, DriverError
from gateway.cluster.hooks import unhook
from gateway.cluster.store import Change, Value
from gateway.cluster.telemetry import remote_device_state

if TYPE_CHECKING:
    from collections.abc import Mapping

    from drivers.base import Invalid
    from gateway.api import Caller
    from gateway.cluster.component import ClusterComponent

log = logging.getLogger("autogrid.cluster.takeover")
DROP_SHARE = 0.75  # drop held devices once the lease is this share of its TTL unrenewed
LOOP_S = 0.05
INFLIGHT_WAIT_S = 5.0


GATED = "this gateway may no longer hold it (cluster lease not renewed, or the store moved it)"


class GatedIO(DeviceIO):
    """A held device's IO that refuses each read and write once this gateway may no
    longer hold it (rule 2 checked at the IO itself: a process frozen past its lease and
    woken again does not poll or write before its takeover loop has let the device go)."""

    def __init__(self, io: DeviceIO, allowed: Callable[[], bool]) -> None:
        self.io = io
        self.allowed = allowed
        self.device_id = io.device_id
        self.endpoint = io.endpoint
        self.stats = io.stats
        self.last_io_end: float | None = None  # wall time the last allowed IO ended

    def __getattr__(self, name: str) -> Any:  # pipeline_window, close, ...
        return getattr(self.io, name)

    def _check(self, what: str) -> None:
        if not self.allowed():
            raise DriverError(f"{self.device_id}: not {what}: {GATED}")

    async def read(self) -> Mapping[str, Any | Invalid | None]:
        self._check("read")
        try:
            return await self.io.read()
        finally:
            self.last_io_end = time.time()

    async def write(self, point: str, value: Any) -> Any:
        self._check("written")
        try:
            return await self.io.write(point, value)
        finally:
            self.last_io_end = time.time()


class Takeover:
    def __init__(self, comp: ClusterComponent,
                 clock: Callable[[], float] | None = None) -> None:
        self.comp = comp
        self.daemon = comp.daemon
        self.store = comp.store
        self.gateway = comp.gateway
        # the store's clock: its lease deadline is counted on it
        store_clock: Callable[[], float] = getattr(comp.store, "clock", time.monotonic)
        self.clock = clock if clock is not None else store_clock
        cfg = self.daemon.cfg
        first = cfg.gateways[0].id
        cl = cfg.cluster
        self.handback_after_s = cl.handback_after_s if cl is not None else 300.0
        # device -> [configured owner, standbys in order]
        self.prefs: dict[str, list[str]] = {
            d.id: [d.gateway or first, *d.standby_gateways] for d in cfg.devices
            if d.enabled and d.standby_gateways}
        self.records: dict[str, Value] = {}  # owners/<device> as the store has them
        self.live: dict[str, Value] = {}  # gateway -> its live/ key
        self.live_since: dict[str, tuple[Any, float]] = {}  # gateway -> (lease, seen at)
        self.held: set[str] = set()  # standby-capable devices this gateway polls now
        self.moves: list[dict[str, Any]] = []  # what this leader moved (for status)
        self.path: Path = comp.acks_path.parent / f"{self.gateway}.cluster-owned.jsonl"
        self._published: tuple[Any, frozenset[str]] | None = None
        self.rounds = 0  # reconcile rounds run (tests wait on it)
        self._held_lease: dict[str, Any] = {}  # held device -> the lease it was taken on
        self._last_write: dict[str, float] = {}  # device -> stamp of its last logged write
        self._leading_since: float | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._unsubs: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None

    # -- life cycle --------------------------------------------------------------------------
    async def detach_configured(self) -> None:
        """Before the store starts: the daemon attached this gateway's configured devices;
        the standby-capable ones wait for an ownership record naming this gateway."""
        for dev_id in [d for d in self.prefs if d in self.comp.own]:
            await self._detach(dev_id, None, "waiting for its ownership record", log_it=False)

    def rebind(self) -> None:
        """After a config reload (which lists configured devices only): devices held by
        takeover stay this gateway's; configured standby-capable ones the reload attached
        again go unless the store gives them here. (The reload's own poller.add starts
        them for a moment first: reload a gateway with standby-capable devices only when
        no standby holds them, or restart it instead.)"""
        for dev_id in self.prefs:
            if dev_id in self.held:  # still ours (the reload listed configured ones only)
                if dev_id not in self.comp.own:
                    self.comp.own.append(dev_id)
                self.comp.remote.pop(dev_id, None)
                self.comp.telemetry.own_set.add(dev_id)
            elif dev_id in self.comp.own:
                self.held.add(dev_id)  # so reconcile() lets it go unless it is ours
        self._wake.set()

    def start(self) -> None:
        self._unsubs = [self.store.watch_prefix("owners/", self._on_owner),
                        self.store.watch_prefix("live/", self._on_live)]
        applier = self.daemon.ports.applier
        if applier is not None:
            applier.on_outcome.append(self._outcome)
        if self.daemon.api is not None:
            self.daemon.api.register(
                "device_move", self._api_move, role="operator",
                help="device_move device=<id> gateway=<id>: move a standby-capable device "
                     "to its owner or one of its standby gateways (the leader does it)")
        self._task = asyncio.create_task(self._loop(), name="cluster takeover")

    async def stop(self) -> None:
        unhook(self._unsubs, self.daemon, self._outcome)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for dev_id in sorted(self.held):  # (no safe setpoints at shutdown: a standby
            await self._detach(dev_id, None, "stopping")  # may hold it once the lease goes)

    # -- watches -----------------------------------------------------------------------------
    def _on_owner(self, ch: Change) -> None:
        dev = ch.key.removeprefix("owners/")
        if ch.value is not None and not isinstance(ch.value.get("gateway"), str):
            log.warning("owners/%s at revision %d is not an ownership record: ignored",
                        dev, ch.revision)
            return
        if ch.value is None:
            self.records.pop(dev, None)
        else:
            self.records[dev] = ch.value
            gw = ch.value.get("gateway")
            if dev in self.prefs and dev not in self.held and isinstance(gw, str) \
                    and gw != self.gateway:
                self.comp.remote[dev] = gw  # fold its readings from the new holder
                st = self.daemon.state.devices.get(dev)
                if st is not None:
                    st.endpoint = f"via {gw}"
        self._wake.set()

    def _on_live(self, ch: Change) -> None:
        gw = ch.key.removeprefix("live/")
        if gw != self.gateway:  # ended the moment it expires: the leader sees it gone sooner
            lease = None if ch.value is None else ch.value.get("lease")
            self.store.watch_lease(gw, lease if isinstance(lease, int) else None)
        if ch.value is None:
            self.live.pop(gw, None)
            self.live_since.pop(gw, None)
        else:
            holding = ch.value.get("holding")
            if not isinstance(holding, list) or not all(isinstance(h, str) for h in holding):
                # a peer that says something else: trust none of its devices as let go
                holding = sorted(self.prefs)
                log.warning("live/%s at revision %d has no list of devices: taken as "
                            "holding all standby-capable devices", gw, ch.revision)
            self.live[gw] = {**ch.value, "holding": holding}
            lease = ch.value.get("lease")
            if self.live_since.get(gw, (None, 0.0))[0] != lease:
                self.live_since[gw] = (lease, self.clock())
        self._wake.set()

    # -- every gateway: hold what the store says, let go first --------------------------------
    def lease_fresh(self) -> bool:
        last = getattr(self.store, "last_keepalive", None)
        ttl = float(getattr(self.store, "ttl", 2))
        return (getattr(self.store, "lease_id", None) is not None and last is not None
                and self.clock() - last < ttl * DROP_SHARE)

    def may_hold(self, dev: str) -> bool:
        """Checked before every read and write of a held device."""
        rec = self.records.get(dev) or {}
        return (self.lease_fresh() and rec.get("gateway") == self.gateway
                and rec.get("lease") == getattr(self.store, "lease_id", None))

    def wanted(self) -> set[str]:
        """The standby-capable devices this gateway may poll now (rules 1 and 2)."""
        if not self.lease_fresh():
            return set()
        lease = getattr(self.store, "lease_id", None)
        out: set[str] = set()
        for dev, rec in self.records.items():
            if dev not in self.prefs or rec.get("gateway") != self.gateway \
                    or rec.get("lease") != lease:
                continue
            others = [gw for gw, v in self.live.items()
                      if gw != self.gateway and dev in (v.get("holding") or [])]
            if dev in self.held or not others:
                out.add(dev)
        return out

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), LOOP_S)
            self._wake.clear()
            try:
                await self.reconcile()
                if self.comp.leading():
                    if self._leading_since is None:
                        self._leading_since = self.clock()
                    await self.lead()
                else:
                    self._leading_since = None
            except Exception:  # never let a bug here end the loop (or the daemon)
                log.exception("takeover step failed")
                await asyncio.sleep(0.5)

    async def reconcile(self) -> None:
        async with self._lock:
            self.rounds += 1
            want = self.wanted()
            for dev in sorted(self.held - want):
                rec = self.records.get(dev) or {}
                to = rec.get("gateway") if rec.get("gateway") != self.gateway else None
                why = ("its lease was not renewed in time" if not self.lease_fresh()
                       else f"the store gives it to {to}" if to else "its record is stale")
                await self._detach(dev, to, why)
            take = want - self.held
            if not await self._publish(self.held | take):
                return  # not said where the others can see it: take nothing
            for dev in sorted(take):
                if dev in self.wanted():
                    await self._attach(dev)
            await self._publish(self.held)

    async def _publish(self, holding: set[str]) -> bool:
        lease = getattr(self.store, "lease_id", None)
        if lease is None:
            return False
        key = (lease, frozenset(holding))
        if self._published == key:
            return True
        try:
            await self.store.publish(f"live/{self.gateway}",
                                     {"lease": lease, "since": time.time(),
                                      "holding": sorted(holding)})
        except Exception as exc:  # the store is away: try again next round
            log.debug("live key not published: %s", exc)
            self._published = None
            return False
        self._published = key
        return True

    async def _attach(self, dev_id: str) -> None:
        d = self.daemon
        dev = next(x for x in d.cfg.devices if x.id == dev_id)
        try:
            io, dstate = d.attach_device(dev, d.cfg)
        except Exception as exc:  # cannot attach: say so, leave the device to others
            log.warning("%s: cannot attach for takeover: %s", dev_id, exc)
            return
        d.state.remove_device(dev_id)
        d.state.add_device(dstate)
        gated = GatedIO(io, lambda: self.may_hold(dev_id))
        self._held_lease[dev_id] = getattr(self.store, "lease_id", None)
        d.ios[dev_id] = gated
        d.poller.add(gated, dev.poll_interval_s)
        if dev_id not in self.comp.own:
            self.comp.own.append(dev_id)
        self.comp.remote.pop(dev_id, None)
        self.comp.telemetry.own_set.add(dev_id)
        self.held.add(dev_id)
        self._log("attach", dev_id)
        log.warning("gateway %s polls %s now (owner record: %s)", self.gateway, dev_id,
                    (self.records.get(dev_id) or {}).get("why"))
        try:  # the leader's current setpoint for it (it was another gateway's to apply)
            e = await self.store.get(f"setpoints/{dev_id}")
        except Exception as exc:  # the leader's next change brings it
            log.debug("%s: committed setpoint not read: %s", dev_id, exc)
            return
        if e is not None:
            self.comp._on_setpoint(Change(e.key, e.value, e.revision))

    async def _detach(self, dev_id: str, to: str | None, why: str, log_it: bool = True
                      ) -> None:
        d = self.daemon
        if dev_id in self.comp.own:
            self.comp.own.remove(dev_id)
        self.comp.telemetry.own_set.discard(dev_id)
        self.comp.remote[dev_id] = to or self.prefs[dev_id][0]
        await d.poller.remove(dev_id)
        applier = d.ports.applier
        dev_w = getattr(applier, "devs", {}).get(dev_id)
        if dev_w is not None:  # drop its intents, then let a write in flight end
            for point in list(dev_w.queue):
                applier._drop(dev_id, dev_w, point,  # type: ignore[union-attr]
                              f"device moved off gateway {self.gateway}: {why}")
        io = d.ios.pop(dev_id, None)
        deadline = time.monotonic() + INFLIGHT_WAIT_S
        while dev_w is not None and dev_w.inflight is not None \
                and time.monotonic() < deadline:  # noqa: ASYNC110 (the applier has no event)
            await asyncio.sleep(0.01)
        if io is not None:
            close = getattr(io, "close", None)
            if close is not None:
                try:
                    await close()
                except Exception as exc:  # a driver bug must not stop the move
                    log.warning("%s: detaching: %s", dev_id, exc)
        d.state.remove_device(dev_id)
        d.state.add_device(remote_device_state(d.cfg, dev_id, self.comp.remote[dev_id]))
        if dev_id in self.held:
            self.held.discard(dev_id)
            lease = self._held_lease.pop(dev_id, None)
            ended = None
            if isinstance(io, GatedIO) and (not self.lease_fresh()
                                            or lease != getattr(self.store, "lease_id", None)):
                ended = io.last_io_end  # its right ended earlier (frozen?): the gate
                if ended is not None:  # a write's outcome is stamped just after its IO ended
                    ended = max(ended, self._last_write.get(dev_id, ended))
            self._log("detach", dev_id, ended)  # refused all IO after this
        if log_it:
            log.warning("gateway %s stopped polling %s: %s", self.gateway, dev_id, why)

    def _log(self, event: str, dev_id: str, at: float | None = None) -> None:
        with contextlib.suppress(OSError), self.path.open("a") as f:
            f.write(json.dumps({"device": dev_id, "event": event,
                                "at": time.time() if at is None else at,
                                "noticed": time.time(), "gateway": self.gateway}) + "\n")

    def _outcome(self, o: Any) -> None:
        if o.device in self.prefs and o.sent and GATED not in str(o.error or ""):
            self._last_write[o.device] = float(o.at)  # (gated or no handle: not sent)
            with contextlib.suppress(OSError), self.path.open("a") as f:
                f.write(json.dumps({"device": o.device, "event": "write", "ok": bool(o.ok),
                                    "at": float(o.at), "gateway": self.gateway}) + "\n")

    # -- the leader: hand devices over, hand them back ---------------------------------------
    def _lease_of(self, gw: str) -> Any:
        v = self.live.get(gw)
        return None if v is None else v.get("lease")

    def decide(self, dev: str) -> tuple[str, str] | None:
        """(gateway, why) when ``dev``'s record should change now, else None."""
        prefs = self.prefs[dev]
        owner = prefs[0]
        rec = self.records.get(dev)
        holder = None if rec is None else rec.get("gateway")
        if holder is None or self._lease_of(str(holder)) is None:
            target = next((g for g in prefs if self._lease_of(g) is not None), None)
            if target is None:
                return None
            if rec is None:
                started = self._leading_since
                if target != owner and (started is None
                                        or self.clock() - started < self._ttl()):
                    return None  # the owner may be starting too: give it a lease's time
                return target, "configured owner" if target == owner else \
                    f"owner {owner} not live"
            return target, f"{holder}'s lease ended"
        if rec is not None and rec.get("lease") != self._lease_of(str(holder)):
            return str(holder), "new lease"
        if holder != owner and rec is not None and not rec.get("pinned"):
            seen = self.live_since.get(owner)
            if seen is not None and self.clock() - seen[1] >= self.handback_after_s:
                return owner, f"handback: {owner} live for {self.handback_after_s:g} s"
        return None

    def _ttl(self) -> float:
        return float(getattr(self.store, "ttl", 2))

    async def lead(self) -> None:
        for dev in self.prefs:
            got = self.decide(dev)
            if got is not None:
                await self.move(dev, got[0], got[1])

    async def move(self, dev: str, to: str, why: str, pinned: bool = False
                   ) -> tuple[bool, str]:
        """Write ``owners/<dev>`` naming ``to`` (fenced); True when committed."""
        old = (self.records.get(dev) or {}).get("gateway")
        rec = {"gateway": to, "lease": self._lease_of(to), "since": time.time(),
               "term": self.store.term, "writer": self.gateway,
               "why": why, "pinned": pinned, "from": old}
        res = await self.store.fenced_put({f"owners/{dev}": rec})
        if not res.ok:
            return False, str(res.reason)
        self.records[dev] = rec
        alarms = self.daemon.ports.alarms
        if old is not None and old != to:
            self.moves.append({"device": dev, "from": old, "to": to, "why": why,
                               "at": time.time()})
            del self.moves[:-100]
            log.warning("%s moves from %s to %s: %s", dev, old, to, why)
            if alarms is not None:
                if to == self.prefs[dev][0]:
                    alarms.clear("cluster", f"takeover:{dev}")
                    alarms.audit("cluster", "device_back", {"device": dev, "from": old,
                                                            "to": to, "why": why})
                else:
                    alarms.raise_("cluster", f"takeover:{dev}", "warning",
                                  f"{dev} moved from {old} to {to}: {why}; its owner is "
                                  f"{self.prefs[dev][0]}")
        return True, "written"

    async def _api_move(self, req: dict[str, Any], caller: Caller) -> Any:
        from gateway.api import ApiError
        dev, to = str(req.get("device") or ""), str(req.get("gateway") or "")
        alarms = self.daemon.ports.alarms
        detail = {"device": dev, "gateway": to}

        def refuse(why: str) -> ApiError:
            if alarms is not None:
                alarms.audit(caller.user, "device_move", detail, ok=False, reason=why)
            return ApiError(why)
        if not self.comp.leading():
            return await self._forward_move(req, caller, detail)
        if dev not in self.prefs:
            raise refuse(f"'{dev}' has no standby_gateways: it stays with its owner")
        if to not in self.prefs[dev]:
            raise refuse(f"{to or '(none)'} may not hold {dev} (allowed: "
                         f"{', '.join(self.prefs[dev])})")
        if self._lease_of(to) is None:
            raise refuse(f"{to} is not live (no cluster lease)")
        ok, why = await self.move(dev, to, f"operator {caller.user}",
                                  pinned=to != self.prefs[dev][0])
        if not ok:
            raise refuse(f"not moved: {why}")
        if alarms is not None:
            alarms.audit(caller.user, "device_move", detail)
        return {"device": dev, "gateway": to, "written": True}

    async def _forward_move(self, req: dict[str, Any], caller: Caller,
                            detail: dict[str, Any]) -> Any:
        """A gateway that does not lead: the leader moves the device (and audits it in
        the site's audit); the reply is the leader's, audited here as this operator's."""
        from gateway.api import ApiError
        alarms = self.daemon.ports.alarms
        try:
            got = await self.comp.forward("device_move", req, caller)
        except ApiError as exc:
            if alarms is not None:
                alarms.audit(caller.user, "device_move", detail, ok=False, reason=str(exc))
            raise
        if alarms is not None:
            alarms.audit(caller.user, "device_move", detail)
        return got

    def status(self) -> dict[str, Any]:
        return {"owners": {d: (r.get("gateway"), r.get("why"))
                           for d, r in sorted(self.records.items())},
                "held": sorted(self.held),
                "holding": {gw: v.get("holding") or [] for gw, v in sorted(self.live.items())},
                "moves": self.moves[-10:]}
