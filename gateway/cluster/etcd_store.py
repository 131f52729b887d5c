"""The etcd backend of the cluster store: leadership on a lease, fenced writes.

- One lease per gateway (TTL ``lease_ttl_s``, kept alive every TTL/3) carries both its
  liveness (published telemetry is attached to it) and its leadership.
- Election: ``<prefix>/leader`` is created with that lease only if absent; the term is
  the key's create revision, so every term is unique and increasing.
- Fencing: a setpoint write is one transaction comparing ``create_revision(<prefix>/leader)``
  with the writer's term; a paused or cut-off old leader's write is refused by etcd, and
  the refusal steps it down.
- A leader that has not renewed its lease for (nearly) a TTL steps down by itself, from a
  local deadline measured from when its last successful keepalive was *sent*: by then the
  lease may have expired at etcd and another gateway may lead.
- A dead peer's lease is revoked the moment it has expired at etcd (:meth:`_reaper_loop`),
  not up to 500 ms later when etcd's own sweep finds it: the leader key of a killed leader
  goes sooner, so the site gets a new leader sooner. Never earlier: a lease is revoked only
  once it cannot be renewed any more (see the loop for why).
- Endpoints: the gateway's own member first, then the site's other members. When a call to
  the current one fails, the client is closed and a fresh one connects to the next
  (:meth:`EtcdStore.switch_member`): the lease is cluster-wide, so it is kept alive
  through any member, and watches resume from the revision after the last one seen. The
  local deadline above still counts from the last keepalive that held, so a switch that
  takes too long steps the leader down first.

aetcd (and grpc) are imported here only: a standalone site never loads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aetcd
from aetcd import exceptions as etcd_errors

from gateway.aio import cancel_and_wait
from gateway.cluster.store import (
    Change,
    ChangeListener,
    ClusterStore,
    Entry,
    FencedWrite,
    Value,
)

log = logging.getLogger("autogrid.cluster.etcd")
RPC_TIMEOUT_S = 2.0
DEADLINE_MARGIN = 0.1  # step down this share of a TTL before the lease could expire
# With a single member, a fresh client on the 1st, 4th, 7th... failure in a row (keepalives
# are tried every TTL/3, so about once a TTL): a returning member is found within a TTL.
SOLE_MEMBER_REDIAL_EVERY = 3
REAP_POLL_S = 0.1  # how often a peer's lease is looked at
REAP_GAP_S = 0.9  # a run of TTL-0 answers counts only while they come closer than this
T = TypeVar("T")


def err_text(exc: BaseException) -> str:
    """An etcd/grpc error as text, for logs and reasons: a log record or reason that held
    the exception itself would keep its failed call, and with it the closed client's
    channel (and grpc's poller thread), alive."""
    return str(exc) or "timeout"


async def rpc(call: Awaitable[T], timeout_s: float = RPC_TIMEOUT_S) -> T:
    """One etcd call, bounded. A call that grpc cancelled itself (its connection was
    closed under it) is a ClientError, not a cancellation of the caller: only a real
    cancellation of the running task propagates, so a store error never ends a loop."""
    try:
        # asyncio.timeout, not wait_for: on a cancel, 3.11's wait_for waits for the call's
        # own task to end, and a grpc call that does not end hung a gateway's stop (seen
        # once in a full test run); no task per call either
        async with asyncio.timeout(timeout_s):
            return await call
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        raise etcd_errors.ClientError("call cancelled: its connection was closed") from None


async def close_client(client: Any) -> None:
    """Close a client fully, even one whose member does not answer: its channel first
    (every call and stream on it ends at once), then aetcd's own close (the watcher);
    grpc keeps a channel that was never closed, and its poller thread, alive."""
    channel = getattr(client, "channel", None)
    if channel is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(channel.close(None), RPC_TIMEOUT_S)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), RPC_TIMEOUT_S)


def _dump(value: Value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _load(raw: bytes) -> Value:
    try:
        v = json.loads(raw)
    except ValueError:
        return {"_invalid": raw[:200].decode(errors="replace")}
    return v if isinstance(v, dict) else {"_invalid": str(v)[:200]}


class ExpiryWatch:
    """When a peer's lease has expired at etcd, from its remaining TTL asked again and again.

    etcd answers whole seconds, truncated: a lease of 2 s or more renewed every TTL/3 always
    shows 1 or more, and shows 0 from the moment less than 1 s remains. So the first 0,
    received at ``t``, says the lease expires by ``t + 1``. A renewal after that shows as 1
    or more for a whole second, so answers to questions sent less than ``REAP_GAP_S`` apart
    see every renewal (a 1 s lease can show 0 right after one: never judged). A 0 in answer
    to a question sent at ``t + 1`` or later, with no renewal seen, means the lease has
    expired at etcd, and etcd refuses to renew an expired lease: revoking it then takes
    nothing from a live gateway, only the wait for etcd's own sweep (every 500 ms)."""

    def __init__(self) -> None:
        self.first_zero: dict[int, float] = {}  # lease -> when its current run of 0s began
        self.last_sent: dict[int, float] = {}  # lease -> when its last answered question left

    def keep(self, leases: set[int]) -> None:
        for table in (self.first_zero, self.last_sent):
            for gone in set(table) - leases:
                del table[gone]

    def answer(self, lease: int, sent: float, got: float, ttl: int, granted: int) -> str:
        """One answer (question sent at ``sent``, answer at ``got``, on one clock):
        "gone" (no such lease), "expired" (revoke it now) or "alive"."""
        prev, self.last_sent[lease] = self.last_sent.get(lease), sent
        if ttl < 0:
            self.first_zero.pop(lease, None)
            return "gone"
        if ttl > 0 or granted < 2 or prev is None or got - prev > REAP_GAP_S:
            # alive; or a renewal could show as 0 (a 1 s lease) or have gone unseen
            self.first_zero.pop(lease, None)
            if ttl == 0:
                self.first_zero[lease] = got
            return "alive"
        start = self.first_zero.setdefault(lease, got)
        if sent < start + 1.0:
            return "alive"
        del self.first_zero[lease]
        return "expired"


class EtcdStore(ClusterStore):
    backend = "etcd"

    def __init__(self, gateway: str, endpoint: tuple[str, int], prefix: str,
                 lease_ttl_s: float = 2.0, campaign: bool = True,
                 clock: Callable[[], float] = time.monotonic,
                 client_factory: Callable[[], Any] | None = None,
                 others: list[tuple[tuple[str, int], Callable[[], Any]]] | None = None
                 ) -> None:
        super().__init__(gateway)
        # How to reach a member: plaintext by default; a site's TLS client from
        # gateway.cluster.tlsclient.client_for (the same aetcd client over TLS).
        # Own member first, then ``others`` (the site's other members) to switch to.
        self.endpoints: list[tuple[tuple[str, int], Callable[[], Any]]] = [
            (endpoint, client_factory or (lambda: aetcd.Client(*endpoint))), *(others or [])]
        self.current = 0
        self.endpoint = endpoint  # the member in use now
        self.client_factory = self.endpoints[0][1]
        self.switches = 0  # to another member
        self.redials = 0  # fresh clients to the same (only) member
        self._switch_lock = asyncio.Lock()
        self.prefix = prefix
        self.ttl = max(2, round(lease_ttl_s))  # etcd grants whole seconds, at least 2
        self.campaign = campaign  # False: a reader (status, bench) never stands
        self.clock = clock
        self.client = self.client_factory()
        self.lease_id: int | None = None
        self.last_keepalive: float | None = None  # send time of the last renewal that held
        self.keepalive_failures = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._leader_changed = asyncio.Event()
        self._lease_lock = asyncio.Lock()
        self._watch_tasks: dict[int, asyncio.Task[None]] = {}
        self._unwatch_leader: Callable[[], None] | None = None
        self.peer_leases: dict[str, int] = {}  # who -> lease to revoke once expired at etcd
        self.reaped: list[tuple[str, int, float]] = []  # (who, lease, at) this store revoked

    # -- keys --------------------------------------------------------------------------------
    def full(self, key: str) -> bytes:
        return f"{self.prefix}/{key}".encode()

    def rel(self, raw: bytes) -> str:
        return raw.decode()[len(self.prefix) + 1:]

    @property
    def leader_key(self) -> bytes:
        return self.full("leader")

    # -- life cycle --------------------------------------------------------------------------
    async def start(self) -> None:
        await rpc(self.client.connect())
        if not self.campaign:
            return
        try:
            await self._new_lease()
        except (etcd_errors.ClientError, TimeoutError) as exc:  # keepalive loop retries
            log.warning("cluster store %s:%d not reachable yet: %s", *self.endpoint,
                        err_text(exc))
        self._tasks = [asyncio.create_task(self._keepalive_loop(), name="cluster keepalive"),
                       asyncio.create_task(self._deadline_loop(), name="cluster deadline"),
                       asyncio.create_task(self._campaign_loop(), name="cluster campaign"),
                       asyncio.create_task(self._reaper_loop(), name="cluster lease reaper")]
        self._unwatch_leader = self.watch_prefix("leader", self._on_leader_key)

    async def stop(self) -> None:
        """Resign (the leader key goes at once, so another gateway need not wait for the
        lease) and revoke the lease; then close the connection."""
        if self._unwatch_leader is not None:
            self._unwatch_leader()
        await cancel_and_wait(self._tasks)
        self._tasks = []
        await cancel_and_wait(list(self._watch_tasks.values()))
        self._watch_tasks.clear()
        if self.is_leader and self.term is not None:
            with contextlib.suppress(Exception):
                t = self.client.transactions
                await asyncio.wait_for(self.client.transaction(
                    compare=[t.create(self.leader_key) == self.term],
                    success=[t.delete(self.leader_key)], failure=[]), RPC_TIMEOUT_S)
            self._set_leadership(False, self.term, None, "stopping")
        if self.lease_id is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.revoke_lease(self.lease_id), RPC_TIMEOUT_S)
        await close_client(self.client)
        # grpc's poller thread lives until its last channel is freed: free ours now
        # (a closed call may still hold one until the loop has run its callbacks).
        self.current, (self.endpoint, self.client_factory) = 0, self.endpoints[0]
        self.client = self.client_factory()
        for _ in range(3):
            await asyncio.sleep(0.02)
            gc.collect()

    # -- lease and leadership ----------------------------------------------------------------
    async def _new_lease(self) -> None:
        async with self._lease_lock:
            sent = self.clock()
            lease = await rpc(self.client.lease(self.ttl))
            self.lease_id = lease.id
            self.ttl = int(lease.ttl) or self.ttl
            self.last_keepalive = sent

    def lease_deadline(self) -> float | None:
        """Local time after which this gateway no longer trusts its lease."""
        if self.last_keepalive is None:
            return None
        return self.last_keepalive + self.ttl * (1.0 - DEADLINE_MARGIN)

    def lease_lapsed(self) -> bool:
        deadline = self.lease_deadline()
        return deadline is None or self.clock() >= deadline

    def _pause(self) -> float:
        """Until the next keepalive: right after a switch to another member, at once
        (until every member has been tried in this run of failures)."""
        failing = self.keepalive_failures
        if failing and len(self.endpoints) > 1 and failing % len(self.endpoints):
            return 0.0
        return self.ttl / 3.0

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(self._pause())
            if self.lease_id is None or self.lease_lapsed():
                await self._renew_lost_lease()
                continue
            sent = self.clock()
            failed: str | None = None
            try:
                reply = await rpc(self.client.refresh_lease(self.lease_id), self.ttl / 3.0)
            except (etcd_errors.ClientError, TimeoutError) as exc:
                failed = err_text(exc)
            if failed is not None:  # switched outside the handler: no call held meanwhile
                self.keepalive_failures += 1
                if self.keepalive_failures == 1:
                    log.warning("cluster lease keepalive failed: %s", failed)
                await self.switch_member(f"keepalive failed: {failed}")
                continue
            if reply is None or reply.TTL <= 0:  # expired at etcd: our keys are gone
                self._step_down("lease expired at etcd")
                self.lease_id = None
                await self._renew_lost_lease()
                continue
            if self.keepalive_failures:
                log.info("cluster lease keepalive works again (member %s:%d)",
                         *self.endpoint)
            self.keepalive_failures = 0
            self.last_keepalive = sent

    async def _renew_lost_lease(self) -> None:
        self._step_down("lease not renewed in time")
        lapsed = self.lease_id
        failed: str | None = None
        try:
            await self._new_lease()
        except (etcd_errors.ClientError, TimeoutError) as exc:
            failed = err_text(exc)
        if failed is not None:
            self.keepalive_failures += 1
            if self.keepalive_failures == 1:
                log.warning("cluster lease cannot be granted: %s", failed)
            await self.switch_member(f"lease grant failed: {failed}")
            return
        self.keepalive_failures = 0
        if lapsed is not None and lapsed != self.lease_id:
            # The lapsed lease may still live at etcd (a member back from an outage
            # extends every lease by a TTL): it holds the leader key and this gateway's
            # published keys, which this gateway no longer trusts. Revoked now, the site
            # need not wait for it to expire before a leader is elected.
            with contextlib.suppress(etcd_errors.ClientError, TimeoutError):
                await rpc(self.client.revoke_lease(lapsed))
        self._leader_changed.set()

    async def switch_member(self, why: str) -> bool:
        """Close the client of the member in use and connect a fresh one to the next
        member (with a single member: to the same one again, every
        ``SOLE_MEMBER_REDIAL_EVERY`` failures; False on the failures in between).
        Watches and calls under way on the old client fail and retry on the new one
        (watches from their next revision).

        A fresh client rather than the old channel's own redial: gRPC backs a channel's
        reconnection attempts off up to two minutes, so a member back after a long
        outage would be found late; a new channel dials at once."""
        sole = len(self.endpoints) < 2
        if sole and (self.keepalive_failures - 1) % SOLE_MEMBER_REDIAL_EVERY:
            return False
        async with self._switch_lock:
            old = self.client
            self.current = (self.current + 1) % len(self.endpoints)
            endpoint, factory = self.endpoints[self.current]
            if not sole:
                log.warning("cluster store: member %s:%d failed (%s); switching to %s:%d",
                            *self.endpoint, why, *endpoint)
            elif self.keepalive_failures <= 1:
                log.warning("cluster store: its only member %s:%d failed (%s); "
                            "reconnecting with a fresh client until it answers",
                            *endpoint, why)
            self.redials += sole
            self.endpoint = endpoint
            self.client = factory()
            self.switches += not sole
            await close_client(old)
            del old
            await asyncio.sleep(0)  # let the ended calls run their callbacks
            gc.collect()  # free the old channel now (grpc keeps it while referenced)
            try:
                await rpc(self.client.connect())
            except (etcd_errors.ClientError, TimeoutError, OSError) as exc:
                log.warning("cluster store: cannot connect to %s:%d: %s", *endpoint,
                            err_text(exc))
        return True

    async def _deadline_loop(self) -> None:
        """Step down the moment the local lease deadline passes (no write after it)."""
        while True:
            await asyncio.sleep(min(0.05, self.ttl / 20.0))
            if self.is_leader and self.lease_lapsed():
                self._step_down("lease not renewed before it could expire")

    def _step_down(self, why: str) -> None:
        if self.is_leader:
            self._set_leadership(False, self.term, None, why)

    def _on_leader_key(self, ch: Change) -> None:
        if ch.value is None:
            if self.is_leader:
                self._step_down("leader key gone")
            self.leader = None
            self.watch_lease("leader", None)
        else:
            self.leader = str(ch.value.get("gateway"))
            lease = ch.value.get("lease")
            self.watch_lease("leader", lease if isinstance(lease, int) else None)
        self._leader_changed.set()

    # -- peers' leases -----------------------------------------------------------------------
    def watch_lease(self, who: str, lease: int | None) -> None:
        """Revoke ``lease`` (``who``'s: the leader, a gateway's live key) as soon as it has
        expired at etcd; None: stop watching ``who``'s."""
        if lease is None:
            self.peer_leases.pop(who, None)
        else:
            self.peer_leases[who] = lease

    async def _reaper_loop(self) -> None:
        """Each peer lease's remaining TTL, every ``REAP_POLL_S``; revoke it the moment
        :class:`ExpiryWatch` says it has expired at etcd."""
        expiry = ExpiryWatch()
        while True:
            await asyncio.sleep(REAP_POLL_S)
            watched = {lease for lease in self.peer_leases.values() if lease != self.lease_id}
            expiry.keep(watched)
            for lease in sorted(watched):
                sent = self.clock()
                try:
                    info = await rpc(self.client.get_lease_info(lease, keys=False),
                                     REAP_GAP_S / 3.0)
                except (etcd_errors.ClientError, TimeoutError):
                    continue
                verdict = expiry.answer(lease, sent, self.clock(), int(info.TTL),
                                        int(info.grantedTTL))
                if verdict == "gone":
                    self._forget_lease(lease)
                elif verdict == "expired":
                    await self._reap(lease)

    async def _reap(self, lease: int) -> None:
        whose = sorted(w for w, v in self.peer_leases.items() if v == lease)
        try:
            await rpc(self.client.revoke_lease(lease))
        except etcd_errors.ClientError as exc:  # revoked meanwhile (not found) or away
            log.debug("lease %x of %s not revoked: %s", lease, whose, err_text(exc))
            return
        except TimeoutError:
            return
        self.reaped.append((",".join(whose), lease, self.clock()))
        log.info("cluster: the lease of %s expired at etcd; revoked it at once rather "
                 "than after etcd's own sweep", ", ".join(whose))
        self._forget_lease(lease)

    def _forget_lease(self, lease: int) -> None:
        for who in [w for w, v in self.peer_leases.items() if v == lease]:
            del self.peer_leases[who]

    async def _campaign_loop(self) -> None:
        while True:
            self._leader_changed.clear()
            if not self.is_leader and self.lease_id is not None and not self.lease_lapsed():
                try:
                    await self._campaign_once()
                except (etcd_errors.ClientError, TimeoutError) as exc:
                    log.debug("campaign failed: %s", err_text(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._leader_changed.wait(), self.ttl / 4.0)

    async def _campaign_once(self) -> None:
        t = self.client.transactions
        ok, resp = await rpc(self.client.transaction(
            compare=[t.create(self.leader_key) == 0],
            success=[t.put(self.leader_key, _dump({"gateway": self.gateway,
                                                   "since": time.time(),
                                                   "lease": self.lease_id}),
                           lease=self.lease_id)],
            failure=[t.get(self.leader_key)]), RPC_TIMEOUT_S)
        if ok:
            self._set_leadership(True, int(resp[0].response_put.header.revision), self.gateway)
            return
        kvs = resp[0] if resp else []
        if kvs:
            _, kv = kvs[0]
            term, leader = int(kv.create_revision), str(_load(kv.value).get("gateway"))
            if leader == self.gateway and kv.lease == self.lease_id:
                # Our key on our live lease (we stepped down on a local deadline that the
                # lease outlived): nobody else could have led since; lead that term again.
                self._set_leadership(True, term, leader)
                return
            self.term, self.leader = term, leader

    # -- reads and watches -------------------------------------------------------------------
    async def get(self, key: str) -> Entry | None:
        kv = await rpc(self.client.get(self.full(key)))
        if kv is None:
            return None
        return Entry(key, _load(kv.value), int(kv.mod_revision), int(kv.create_revision))

    async def get_prefix(self, prefix: str) -> list[Entry]:
        res = await rpc(self.client.get_prefix(self.full(prefix)))
        return [Entry(self.rel(kv.key), _load(kv.value), int(kv.mod_revision),
                      int(kv.create_revision)) for kv in res]

    def watch_prefix(self, prefix: str, listener: ChangeListener) -> Callable[[], None]:
        task = asyncio.create_task(self._watch_loop(prefix, listener),
                                   name=f"cluster watch {prefix}")
        self._watch_tasks[id(task)] = task

        def cancel() -> None:
            task.cancel()
            self._watch_tasks.pop(id(task), None)
        return cancel

    async def _watch_loop(self, prefix: str, listener: ChangeListener) -> None:
        """The current keys, then every change from the next revision on; after a lost
        stream, resume from the revision after the last one seen (nothing missed)."""
        rev: int | None = None
        failures = 0
        while True:
            client = self.client
            try:
                if rev is None:
                    res = await rpc(self.client.get_prefix(self.full(prefix)))
                    for kv in res:
                        self._deliver(listener, Change(self.rel(kv.key), _load(kv.value),
                                                       int(kv.mod_revision)))
                    rev = int(res.header.revision) + 1
                w = await rpc(self.client.watch_prefix(self.full(prefix), start_revision=rev))
                failures = 0
                try:
                    async for ev in w:
                        rev = int(ev.kv.mod_revision) + 1
                        value = None if ev.kind == "DELETE" else _load(ev.kv.value)
                        self._deliver(listener, Change(self.rel(ev.kv.key), value,
                                                       int(ev.kv.mod_revision)))
                finally:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(w.cancel(), 1.0)
            except etcd_errors.RevisionCompactedError:
                rev = None  # history gone: read the present afresh
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                failures += 1  # grpc ended the stream: its connection was closed
            except (etcd_errors.ClientError, TimeoutError) as exc:
                failures += 1
                if failures == 1:
                    log.warning("cluster watch on %s lost: %s; retrying", prefix,
                                err_text(exc))
            if self.client is not client:  # switched to another member: resume there now
                failures = 0
            await asyncio.sleep(min(2.0, 0.1 * 2 ** min(failures, 5)))

    @staticmethod
    def _deliver(listener: ChangeListener, ch: Change) -> None:
        try:
            listener(ch)
        except Exception:  # a listener bug must not end the watch
            log.exception("cluster watch listener failed on %s", ch.key)

    # -- writes ------------------------------------------------------------------------------
    async def put(self, key: str, value: Value) -> int:
        res = await rpc(self.client.put(self.full(key), _dump(value)))
        return int(res.header.revision)

    async def publish(self, key: str, value: Value) -> int:
        if self.lease_id is None:
            raise etcd_errors.ClientError("no lease yet")
        res = await rpc(self.client.put(self.full(key), _dump(value), lease=self.lease_id))
        return int(res.header.revision)

    async def fenced_put(self, items: dict[str, Value]) -> FencedWrite:
        term = self.term
        if not self.is_leader or term is None:
            return self._refused(term, "not the leader")
        if self.lease_lapsed():
            self._step_down("lease not renewed before it could expire")
            return self._refused(term, "lease not renewed in time: stepped down")
        t = self.client.transactions
        try:
            ok, resp = await rpc(self.client.transaction(
                compare=[t.create(self.leader_key) == term],
                success=[t.put(self.full(k), _dump(v)) for k, v in items.items()],
                failure=[t.get(self.leader_key)]), RPC_TIMEOUT_S)
        except (etcd_errors.ClientError, TimeoutError) as exc:
            return FencedWrite(False, term, reason=f"store did not answer: {err_text(exc)}",
                               unknown=True)
        if ok:
            return FencedWrite(True, term, int(resp[0].response_put.header.revision))
        now_term = None
        if resp and resp[0]:
            _, kv = resp[0][0]
            now_term = int(kv.create_revision)
        self._step_down(f"fenced write refused: term {term} is over"
                        + (f" (term {now_term} leads)" if now_term else " (no leader)"))
        return self._refused(term, f"refused by fencing: term {term} is no longer current")

    def _refused(self, term: int | None, why: str) -> FencedWrite:
        self.refused += 1
        self.last_refusal = why
        return FencedWrite(False, term, reason=why)

    def status(self) -> dict[str, Any]:
        out = super().status()
        last = self.last_keepalive
        out.update({"endpoint": f"{self.endpoint[0]}:{self.endpoint[1]}",
                    "own_endpoint": self.current == 0, "member_switches": self.switches,
                    "member_redials": self.redials,
                    "lease_ttl_s": self.ttl,
                    "lease_age_s": None if last is None else self.clock() - last,
                    "keepalive_failures": self.keepalive_failures})
        return out
