"""Operators' one-shot commands (a breaker's trip or close) on a device that another
gateway polls: the leader hands the command to that gateway through the store, which runs
it once through its own applier and answers with what the device took.

- The leader writes ``commands/<device>`` fenced on its term, with an ``id``, the point,
  value, user, the gateway meant to run it and the wall-clock time, then waits up to
  ``COMMAND_WAIT_S`` (inside the forward wait of a follower that asked) for the answer in
  ``command_reports/<device>`` with that id. Its reply is the device's read-back, or the
  refusal, or that no answer came (then it may or may not have acted).
- The gateway that polls the device runs a command with an id at most once: never one it
  has seen, never one written before it started (a restarted gateway does not replay the
  store's last command), never one from an older term than one it applied, and never one
  older than ``COMMAND_MAX_AGE_S`` when it sees it (it answers that it did not run it).
  It waits up to ``DEVICE_WAIT_S`` for the device's first answer; a command the device
  refused or did not answer is dropped, not retried later: a trip must not happen minutes
  after the operator was told it failed.
- Commands without an id (the leader's controller: islanding, protection) keep the
  component's own path (retried until the device takes them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

from gateway.api import ApiError
from gateway.cluster.store import Change, Value
from gateway.model import Quality

if TYPE_CHECKING:
    from gateway.cluster.component import ClusterComponent

log = logging.getLogger("autogrid.cluster")

COMMAND_WAIT_S = 3.5  # the leader waits this long for the owner's answer (< FORWARD_WAIT_S)
DEVICE_WAIT_S = 2.5  # the owner waits this long for the device's first answer
COMMAND_MAX_AGE_S = 3.0  # a command older than this when its owner sees it is not run
SEEN_KEEP = 1000  # command ids an owner remembers (one per operator command)


class RemoteCommands:
    """Both ends of an operator's command on another gateway's device."""

    def __init__(self, comp: ClusterComponent) -> None:
        self.comp = comp
        self.store = comp.store
        self.gateway = comp.gateway
        self.started_at = time.time()
        self.sent = 0
        self.ran = 0
        self.not_run: deque[dict[str, Any]] = deque(maxlen=20)  # (for status and tests)
        self._waiting: dict[str, asyncio.Future[Value]] = {}
        self._seen: deque[str] = deque(maxlen=SEEN_KEEP)
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsub: Any = None

    def start(self) -> None:
        self.started_at = time.time()
        self._unsub = self.store.watch_prefix("command_reports/", self._on_answer)

    async def stop(self) -> None:
        if self._unsub is not None:
            self._unsub()
            self._unsub = None
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for fut in self._waiting.values():
            fut.cancel()

    def status(self) -> dict[str, Any]:
        return {"sent": self.sent, "ran": self.ran, "not_run": list(self.not_run)[-5:]}

    # -- the leader ------------------------------------------------------------------------
    def holder(self, dev: str) -> str | None:
        """The gateway that polls ``dev`` now (a takeover's record, else its config)."""
        rec = self.comp.takeover.records.get(dev)
        if rec is not None and isinstance(rec.get("gateway"), str):
            return str(rec["gateway"])
        return self.comp.polled_elsewhere(dev)

    async def send(self, dev: str, point: str, value: Any, user: str) -> dict[str, Any]:
        """Have the gateway that polls ``dev`` run ``point = value`` once; the reply is
        what the device took, or an ApiError saying what happened instead."""
        to = self.holder(dev)
        if to is None or to == self.gateway:
            raise ApiError(f"{dev} is not polled by another gateway: '{point}' not sent")
        if not self.comp.leading():
            raise ApiError(f"gateway {self.gateway} does not lead the cluster: '{point}' "
                           f"to {dev} was not sent")
        cid = uuid.uuid4().hex
        fut: asyncio.Future[Value] = asyncio.get_running_loop().create_future()
        self._waiting[cid] = fut
        what = f"{dev} {point}"
        try:
            res = await self.store.fenced_put({f"commands/{dev}": {
                "id": cid, "point": point, "value": value, "user": user, "to": to,
                "writer": self.gateway, "term": self.store.term, "at": time.time()}})
            if not res.ok and not res.unknown:
                raise ApiError(f"{what} not sent: {res.reason}")
            # (a write the store did not answer may still have committed: wait as well)
            self.sent += 1
            try:
                ans = await asyncio.wait_for(asyncio.shield(fut), COMMAND_WAIT_S)
            except TimeoutError:
                sent = (f"was sent to gateway {to}, which" if res.ok else
                        f"may or may not have reached gateway {to} (the store did not "
                        f"answer the write: {res.reason}), which")
                raise ApiError(f"{what} {sent} did not answer within {COMMAND_WAIT_S:g} "
                               f"s: the breaker may or may not have acted (see {to}'s "
                               f"log); it is not retried") from None
        finally:
            self._waiting.pop(cid, None)
        if not ans.get("ok"):
            raise ApiError(str(ans.get("error")))  # (it names the gateway and device)
        return {"device": dev, "point": point, "command": True, "written": True,
                "read_back": ans.get("read_back"), "at": ans.get("at"),
                "polled_by": ans.get("gateway") or to}

    def _on_answer(self, ch: Change) -> None:
        if ch.value is None:
            return
        fut = self._waiting.get(str(ch.value.get("id")))
        if fut is not None and not fut.done():
            fut.set_result(ch.value)

    # -- the gateway that polls the device -------------------------------------------------
    def on_command(self, dev: str, v: Value) -> None:
        """A ``commands/<dev>`` record with an id: run it once, or say why not."""
        cid = str(v.get("id"))
        if cid in self._seen:
            return  # (a watch that resumed delivers it again)
        self._seen.append(cid)
        at, term = v.get("at"), v.get("term")
        if not isinstance(at, int | float) or not isinstance(term, int):
            self._not_run(dev, v, "malformed command record (no time or term)")
            return
        if at < self.started_at:
            # The store's last command, from before this gateway (re)started: it was
            # carried out then or answered as not, never run again.
            self._not_run(dev, v, f"written before gateway {self.gateway} started",
                          answer=False)
            return
        age = time.time() - at
        if age > COMMAND_MAX_AGE_S:
            self._not_run(dev, v, f"not run: the command reached gateway {self.gateway} "
                                  f"{age:.1f} s after it was given (more than "
                                  f"{COMMAND_MAX_AGE_S:g} s)")
            return
        if term < self.comp.applied_term.get(dev, 0):
            self._not_run(dev, v, f"not run: term {term} is older than the leader's whose "
                                  f"setpoints {dev} follows")
            return
        applier = self.comp.daemon.ports.applier
        state = self.comp.daemon.state.devices.get(dev)
        point = v.get("point")
        if applier is None or dev not in self.comp.own or \
                dev not in self.comp.daemon.ios or not isinstance(point, str):
            self._not_run(dev, v, f"not run: gateway {self.gateway} does not poll {dev}")
            return
        quality = state.device_quality(time.time()) if state is not None else None
        if quality is not Quality.GOOD:
            self._not_run(dev, v, f"not run: {dev} is {quality} at gateway {self.gateway}")
            return
        task = asyncio.create_task(self._run(dev, point, v), name=f"command {dev} {point}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, dev: str, point: str, v: Value) -> None:
        applier = self.comp.daemon.ports.applier
        fut = applier.command(dev, point, v.get("value")) if applier is not None else None
        if fut is None:
            await self._answer(dev, v, ok=False, error=f"not run: gateway {self.gateway} "
                                                       f"has no handle for {dev}")
            return
        self.ran += 1
        log.info("%s %s by %s (leader %s, term %s) run here", dev, point, v.get("user"),
                 v.get("writer"), v.get("term"))
        try:
            out = await asyncio.wait_for(asyncio.shield(fut), DEVICE_WAIT_S)
        except TimeoutError:
            self._drop(dev, point, "no answer in time")
            await self._answer(dev, v, ok=False, error=(
                f"{dev} did not answer {point} within {DEVICE_WAIT_S:g} s at gateway "
                f"{self.gateway}: it may or may not have acted; not retried"))
            return
        if not out.ok:
            self._drop(dev, point, "refused")
            await self._answer(dev, v, ok=False, error=(
                f"{dev} refused/failed {point} at gateway {self.gateway}: {out.error}; "
                f"not retried"))
            return
        await self._answer(dev, v, ok=True, read_back=out.read_back, at=out.at)

    def _drop(self, dev: str, point: str, why: str) -> None:
        applier = self.comp.daemon.ports.applier
        if applier is not None:
            applier.cancel_command(dev, point, f"operator command {why}: not retried")

    def _not_run(self, dev: str, v: Value, why: str, answer: bool = True) -> None:
        log.warning("%s: command %s from %s (term %s) %s", dev, v.get("point"),
                    v.get("writer"), v.get("term"), why)
        self.not_run.append({"device": dev, "id": v.get("id"), "point": v.get("point"),
                             "why": why, "at": time.time()})
        if answer:
            task = asyncio.create_task(self._answer(dev, v, ok=False, error=why),
                                       name=f"command answer {dev}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _answer(self, dev: str, v: Value, ok: bool, error: str | None = None,
                      read_back: Any = None, at: float | None = None) -> None:
        try:
            await self.store.put(f"command_reports/{dev}", {
                "id": v.get("id"), "point": v.get("point"), "value": v.get("value"),
                "ok": ok, "error": error, "read_back": read_back,
                "at": at if at is not None else time.time(), "gateway": self.gateway})
        except Exception as exc:  # the leader will say that no answer came
            log.warning("answer to the %s command on %s not written: %s", v.get("point"),
                        dev, exc)
