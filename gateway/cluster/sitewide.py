"""The site as one (etcd backend): operator commands from any gateway, and the site's
operating state in the store so that it outlives a leader.

- Forwarding: an operator/engineer command given on a gateway that does not lead is
  written as ``requests/<gateway>`` (one outstanding request per gateway: its commands
  queue behind each other) with an id, the command, its arguments, the user and role.
  The leader runs it through its own API handler (audited there as ``user@gateway``) and
  answers in ``answers/<gateway>`` with the same id: the handler's reply (what the device
  took) or its refusal, the leader's name and term. The asking gateway waits at most
  ``FORWARD_WAIT_S`` and says when no answer came (the leader may or may not have acted);
  with no leader elected it refuses at once. Keys per gateway keep the store bounded.
  A leader runs only requests written after it became leader (one from before, left
  unanswered by a leader that died, may have been carried out: never run twice).
- Site state: the leader writes ``site/control`` (mode, stage, reason, whether an operator
  holds it, active overrides with their wall-clock expiry, operators' changes to EV
  sessions such as priority and departure), fenced, whenever it changes.
  A new leader takes them over before its first cycle, so an island held by an operator
  stays held and an estop stays.
- Audit: every audit row the leader records is appended, fenced, as ``audit/<slot>``
  (``seq`` modulo ``AUDIT_KEEP``: bounded retention, rows never rewritten otherwise) with
  writer, term and time.
- Alarms: each gateway publishes its alarms under ``alarms/<gateway>`` (leased: they go
  with the gateway). An acknowledgement of another gateway's alarm
  (``alarm_ack {key, gateway}``) is forwarded like a command, to that gateway instead of
  the leader (``for_leader`` false), and answered by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from gateway.api import ApiError, Caller
from gateway.cluster.store import Change, Value

if TYPE_CHECKING:
    from gateway.cluster.component import ClusterComponent

log = logging.getLogger("autogrid.cluster")

# Inside the API clients' 5 s (the console's, the CLI's): a device that answers the leader
# later than this is reported as "no answer yet, may or may not have been carried out",
# and the leader's audit row says what happened.
FORWARD_WAIT_S = 4.5
AUDIT_KEEP = 1000  # audit rows kept in the store (the oldest slot is reused)
ALARM_PUBLISH_S = 0.2  # alarms are published at most this often
HELD_MODES = ("island", "estop", "black_start", "reconnect")


def _site_value(ctl: Any, clock_now: float, wall_now: float) -> dict[str, Any] | None:
    """Mode and overrides of the controller as stored (None: no controller here)."""
    modes = getattr(ctl, "modes", None)
    if modes is None:
        return None
    overrides = [{"device": o.device, "point": o.point, "value": o.value, "user": o.user,
                  "expires_at": wall_now + (o.expires_s - clock_now)}
                 for o in getattr(ctl, "overrides", {}).values()
                 if o.expires_s > clock_now]
    overrides.sort(key=lambda o: (o["device"], o["point"]))
    ev: dict[str, Any] = {}  # operators' changes to EV sessions (priority, departure, ...)
    book = getattr(ctl, "sessions", None)
    for charger, sess in sorted(getattr(book, "active", {}).items()):
        if sess.overrides:
            ev[charger] = {
                "overrides": {k: v for k, v in sess.overrides.items() if k != "departure_s"},
                "departure_at": (wall_now + (sess.overrides["departure_s"] - clock_now)
                                 if "departure_s" in sess.overrides else None),
                "arrival_at": wall_now - (clock_now - sess.arrival_s),
                "_departure_s": sess.overrides.get("departure_s")}
    return {"mode": modes.mode, "stage": modes.stage, "reason": modes.reason,
            "held": modes.held, "source": modes.source, "overrides": overrides, "ev": ev}


class SiteWide:
    """Forwarded commands, stored mode/overrides, audit and alarms of one gateway."""

    def __init__(self, comp: ClusterComponent) -> None:
        self.comp = comp
        self.store = comp.store
        self.gateway = comp.gateway
        self.leader_since: float | None = None
        self.started_at = time.time()  # requests to this gateway itself: from then on
        self.written: dict[str, Any] | None = None  # site/control as last committed
        self.control: Value | None = None  # site/control as the store has it (watched)
        self.published: dict[str, list[dict[str, Any]]] = {}  # gateway -> its alarms
        self.audit_seq = 0
        self.audit_appended = 0
        self._audit_rows: list[dict[str, Any]] = []
        self._audit_wake = asyncio.Event()
        self._alarm_wake = asyncio.Event()
        self._answers: dict[str, asyncio.Future[Value]] = {}
        self._forward_lock = asyncio.Lock()
        self._done: set[str] = set()  # request ids this leader answered
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubs: list[Any] = []

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        self.started_at = time.time()
        self._unsubs = [self.store.watch_prefix("site/control", self._on_control),
                        self.store.watch_prefix("alarms/", self._on_alarms),
                        self.store.watch_prefix("requests/", self._on_request),
                        self.store.watch_prefix(f"answers/{self.gateway}", self._on_answer)]
        alarms = self.comp.daemon.ports.alarms
        if alarms is not None:
            alarms.listeners.append(self._alarm_changed)
            alarms.on_audit.append(self._audited)
        api = self.comp.daemon.api
        if api is not None:
            api.register("cluster_site", lambda _r, _c: self.site(), role="viewer",
                         help="the site as stored: mode, overrides, alarms of every "
                              "gateway, the last audit rows")
            from gateway.cluster.view import cluster_view
            api.register("cluster_view", lambda _r, _c: cluster_view(self.comp),
                         role="viewer", help="the console's Cluster screen: members, "
                                             "leader, leases, gateways, takeovers")
        self._alarm_wake.set()
        self._tasks = [asyncio.create_task(self._audit_loop(), name="cluster audit"),
                       asyncio.create_task(self._alarm_loop(), name="cluster alarms")]

    async def stop(self) -> None:
        for unsub in self._unsubs:
            unsub()
        self._unsubs = []
        alarms = self.comp.daemon.ports.alarms
        if alarms is not None:
            with contextlib.suppress(ValueError):
                alarms.listeners.remove(self._alarm_changed)
            with contextlib.suppress(ValueError):
                alarms.on_audit.remove(self._audited)
        tasks, self._tasks = list(self._tasks), []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for fut in self._answers.values():
            fut.cancel()

    def _on_control(self, ch: Change) -> None:
        if ch.key == "site/control":
            self.control = ch.value

    def _on_alarms(self, ch: Change) -> None:
        gw = ch.key.removeprefix("alarms/")
        alarms = (ch.value or {}).get("alarms")
        if isinstance(alarms, list) and ch.value is not None:
            self.published[gw] = [a for a in alarms if isinstance(a, dict)]
        else:
            self.published.pop(gw, None)  # its lease ended: gone with it

    def site_alarms(self, own: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """This gateway's alarms and the active ones every other gateway published, keyed
        ``<gateway>/<key>`` (``alarm_ack`` with that key acknowledges it there)."""
        others = [{**a, "key": f"{gw}/{a.get('key')}", "gateway": gw}
                  for gw, alarms in sorted(self.published.items()) if gw != self.gateway
                  for a in alarms]
        return [{**a, "gateway": self.gateway} for a in own] + others

    def follower_status(self, status: dict[str, Any]) -> dict[str, Any]:
        """``control_status`` on a gateway that does not lead: the mode and overrides the
        leader stored (this gateway's own controller does not run)."""
        v = self.control
        if v is None:
            return status
        mode = {**(status.get("mode") or {}),
                **{k: v.get(k) for k in ("mode", "stage", "reason", "held", "source")},
                "stored_by": v.get("writer"), "term": v.get("term")}
        return {**status, "mode": mode, "overrides": list(v.get("overrides") or [])}

    # -- a follower: forward to the leader -------------------------------------------------
    async def forward(self, cmd: str, req: dict[str, Any], caller: Caller,
                      to: str | None = None) -> Any:
        """Have the leader (or gateway ``to``: an alarm's own gateway) run ``cmd``; its
        reply (or refusal) is this command's."""
        async with self._forward_lock:
            leader = to or self.store.leader
            if leader is None or leader == self.gateway:
                raise ApiError(f"no cluster leader is elected (gateway {self.gateway} "
                               f"cannot reach one): '{cmd}' was not carried out")
            if to is not None and to not in [g.id for g in self.comp.daemon.cfg.gateways]:
                raise ApiError(f"unknown gateway {to!r}: '{cmd}' was not carried out")
            rid = uuid.uuid4().hex
            fut: asyncio.Future[Value] = asyncio.get_running_loop().create_future()
            self._answers[rid] = fut
            args = {k: v for k, v in req.items() if k not in ("cmd", "id", "token")}
            try:
                try:
                    await self.store.put(f"requests/{self.gateway}", {
                        "id": rid, "cmd": cmd, "args": args, "user": caller.user,
                        "role": caller.role, "from": self.gateway, "to": leader,
                        "for_leader": to is None, "at": time.time()})
                except Exception as exc:
                    raise ApiError(f"'{cmd}' could not be forwarded to the cluster leader "
                                   f"{leader}: {exc}; it was not carried out") from None
                try:
                    ans = await asyncio.wait_for(fut, FORWARD_WAIT_S)
                except TimeoutError:
                    raise ApiError(f"'{cmd}' was forwarded to the cluster leader {leader} "
                                   f"but no answer came within {FORWARD_WAIT_S:g} s: it may "
                                   f"or may not have been carried out (see the audit log)"
                                   ) from None
            finally:
                self._answers.pop(rid, None)
        who = f"{ans.get('leader')} (term {ans.get('term')})"
        if not ans.get("ok"):
            raise ApiError(f"cluster leader {who}: {ans.get('error')}")
        result = ans.get("result")
        if isinstance(result, dict):
            return {**result, "carried_out_by": ans.get("leader"), "term": ans.get("term")}
        return {"result": result, "carried_out_by": ans.get("leader"),
                "term": ans.get("term")}

    def _on_answer(self, ch: Change) -> None:
        if ch.key != f"answers/{self.gateway}" or ch.value is None:
            return
        fut = self._answers.get(str(ch.value.get("id")))
        if fut is not None and not fut.done():
            fut.set_result(ch.value)

    # -- the leader: run forwarded requests ------------------------------------------------
    def _on_request(self, ch: Change) -> None:
        v = ch.value
        if v is None:
            return
        if v.get("for_leader", True):
            if not self.comp.leading() or self.leader_since is None:
                return
            since = self.leader_since
        elif v.get("to") == self.gateway:
            since = self.started_at
        else:
            return
        at, rid = v.get("at"), v.get("id")
        if not isinstance(at, int | float) or at < since or \
                not isinstance(rid, str) or rid in self._done:
            return  # from before this leadership (may have been run): never twice
        self._done.add(rid)
        if len(self._done) > 10_000:
            self._done.clear()
        src = ch.key.removeprefix("requests/")
        task = asyncio.create_task(self._run(src, rid, v), name=f"cluster request {src}")
        self._tasks.append(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    async def _run(self, src: str, rid: str, v: Value) -> None:
        term = self.store.term
        answer: Value = {"id": rid, "leader": self.gateway, "term": term}
        try:
            result = await self._execute(v)
            answer.update(ok=True, result=result)
        except ApiError as exc:
            answer.update(ok=False, error=str(exc))
        except Exception as exc:  # a handler bug: say so, never claim it was done
            log.error("forwarded %r from %s failed: %s", v.get("cmd"), src, exc)
            answer.update(ok=False, error=f"internal error: {type(exc).__name__}: {exc} "
                                          f"(not carried out)")
        answer["at"] = time.time()
        try:
            await self.store.put(f"answers/{src}", answer)
        except Exception as exc:  # the asking gateway will say no answer came
            log.warning("answer to %s's %r not written: %s", src, v.get("cmd"), exc)

    async def _execute(self, v: Value) -> Any:
        api = self.comp.daemon.api
        cmd = v.get("cmd")
        command = api.commands.get(cmd) if api is not None and isinstance(cmd, str) else None
        if command is None or command.role == "viewer":
            raise ApiError(f"'{cmd}' is not a command the leader runs for another gateway")
        role = v.get("role")
        caller = Caller(-1, -1, -1, f"{v.get('user')}@{v.get('from')}",
                        role if role in ("viewer", "operator", "engineer") else "viewer")
        if not caller.may(command.role):
            raise ApiError(f"'{cmd}' needs the {command.role} role; {caller.user} is "
                           f"{caller.role}")
        args = v.get("args")
        result = command.handler(dict(args) if isinstance(args, dict) else {}, caller)
        if inspect.isawaitable(result):
            result = await result
        return result

    # -- the leader: mode and overrides in the store ---------------------------------------
    def became_leader(self) -> None:
        self.leader_since = time.time()
        self.written = None
        self._audit_wake.set()

    def site_items(self) -> dict[str, Value]:
        """``site/control`` for this cycle's fenced write, when it changed."""
        ctl: Any = self.comp.daemon.ports.controller
        if ctl is None:
            return {}
        value = _site_value(ctl, ctl.clock(), time.time())
        if value is None:
            return {}
        # (compared without the wall-clock times, which move with every cycle)
        cmp = {**value, "overrides": [{k: o[k] for k in ("device", "point", "value", "user")}
                                      for o in value["overrides"]],
               "ev": {c: (e["overrides"], e["_departure_s"]) for c, e in value["ev"].items()}}
        if cmp == self.written:
            return {}
        self.written = cmp  # (a write that fails resets it: see committed())
        ev = {c: {k: x for k, x in e.items() if k != "_departure_s"}
              for c, e in value["ev"].items()}
        return {"site/control": {**value, "ev": ev, "writer": self.gateway,
                                 "term": self.store.term, "at": time.time()}}

    def committed(self, ok: bool, keys: list[str]) -> None:
        if not ok and "site/control" in keys:
            self.written = None

    async def take_over(self) -> None:
        """A new leader takes mode and overrides from the store before its first cycle."""
        audit = await self.store.get_prefix("audit/")
        self.audit_seq = max([int(e.value.get("seq") or 0) for e in audit] or [0])
        ctl: Any = self.comp.daemon.ports.controller
        modes = getattr(ctl, "modes", None)
        entry = await self.store.get("site/control")
        if ctl is None or modes is None or entry is None:
            return
        v = entry.value
        now, wall = ctl.clock(), time.time()
        from gateway.control.safety import Override
        for o in v.get("overrides") or []:
            try:
                left = float(o["expires_at"]) - wall
                if left > 0:
                    ctl.overrides[(str(o["device"]), str(o["point"]))] = Override(
                        str(o["device"]), str(o["point"]), o["value"], now + left,
                        str(o.get("user") or "?"), now)
            except (KeyError, TypeError, ValueError):
                log.warning("stored override %r skipped: malformed", o)
        self._take_ev(ctl, v.get("ev"), now, wall)
        mode = v.get("mode")
        if mode in HELD_MODES and modes.mode != mode:
            modes._enter(str(mode), now, f"taken over from the store (leader "
                                         f"{v.get('writer')}, term {v.get('term')}): "
                                         f"{v.get('reason')}", int(v.get("stage") or 0))
            modes.held = bool(v.get("held"))
            modes.source = str(v.get("source") or modes.source)
            for c in self.comp.daemon.components:
                changed = getattr(c, "_mode_changed", None)
                if changed is not None:
                    changed()
        log.info("leader took over mode %s and %d override(s) from the store", modes.mode,
                 len(ctl.overrides))

    @staticmethod
    def _take_ev(ctl: Any, stored: Any, now: float, wall: float) -> None:
        """Operators' EV session changes: the session goes on here with them (the car's
        own readings update it from the next cycle; it closes when the car leaves)."""
        book = getattr(ctl, "sessions", None)
        if book is None or not isinstance(stored, dict):
            return
        from gateway.control.config import EvDefaults
        from gateway.control.sessions import EvSession
        for charger, e in stored.items():
            try:
                o = dict(e["overrides"])
                if e.get("departure_at") is not None:
                    o["departure_s"] = now + (float(e["departure_at"]) - wall)
                sess = book.active.get(charger)
                if sess is None:
                    d = book.defaults.get(charger) or EvDefaults()
                    arrival = now - (wall - float(e["arrival_at"]))
                    sess = EvSession(charger, arrival, arrival + d.dwell_h * 3600.0,
                                     d.energy_kwh, d.priority, d.v2g_allowed,
                                     d.departure_soc_pct)
                    book.active[charger] = sess
                for key, value in o.items():
                    sess.overrides[key] = value
                    setattr(sess, key, value)
            except (KeyError, TypeError, ValueError, AttributeError):
                log.warning("stored EV session change for %s skipped: malformed", charger)

    # -- audit rows ------------------------------------------------------------------------
    def _audited(self, row: dict[str, Any]) -> None:
        if self.comp.leading():
            self._audit_rows.append(row)
            del self._audit_rows[:-AUDIT_KEEP]
            self._audit_wake.set()

    async def _audit_loop(self) -> None:
        while True:
            await self._audit_wake.wait()
            self._audit_wake.clear()
            while self._audit_rows and self.comp.leading():
                row = self._audit_rows[0]
                seq = self.audit_seq + 1
                res = await self.store.fenced_put({f"audit/{seq % AUDIT_KEEP:04d}": {
                    **row, "seq": seq, "writer": self.gateway, "term": self.store.term,
                    "at": time.time()}})
                if not res.ok:
                    break  # not leader any more (or unknown): the rows stay here only
                self.audit_seq = seq
                self.audit_appended += 1
                self._audit_rows.pop(0)

    # -- alarms ----------------------------------------------------------------------------
    def _alarm_changed(self, _a: Any) -> None:
        self._alarm_wake.set()

    async def _alarm_loop(self) -> None:
        alarms = self.comp.daemon.ports.alarms
        while alarms is not None:
            await self._alarm_wake.wait()
            self._alarm_wake.clear()
            try:
                await self.store.publish(f"alarms/{self.gateway}", {
                    "gateway": self.gateway, "at": time.time(),
                    "alarms": alarms.listing(active_only=True)[:200]})
            except Exception as exc:  # no lease yet or the store away: try again soon
                log.debug("alarms not published: %s", exc)
                self._alarm_wake.set()
            await asyncio.sleep(ALARM_PUBLISH_S)

    # -- viewing ---------------------------------------------------------------------------
    async def site(self) -> dict[str, Any]:
        entry = await self.store.get("site/control")
        alarms = await self.store.get_prefix("alarms/")
        audit = sorted((e.value for e in await self.store.get_prefix("audit/")),
                       key=lambda r: int(r.get("seq") or 0))
        return {"control": entry.value if entry else None,
                "alarms": {e.key.removeprefix("alarms/"): e.value.get("alarms")
                           for e in alarms},
                "audit": audit[-20:], "leader": self.store.leader, "term": self.store.term}
