"""The cluster store: what the gateways of a site share, behind one small typed interface.

Two backends:

- ``standalone`` (:class:`StandaloneStore`): one gateway, in process, persisted as a JSON
  file under the daemon's state directory; always the leader, term 1.
- ``etcd`` (:class:`gateway.cluster.etcd_store.EtcdStore`): one etcd member per gateway;
  leadership on a lease, every setpoint write fenced by that leadership.

Keys are relative to the site's prefix (``setpoints/bess1``); values are JSON objects.
A *fenced* write commits only while the writer still holds the term it names, and its
result says what really happened (written at a revision, refused, or unknown).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("autogrid.cluster")

Value = dict[str, Any]


@dataclass(frozen=True)
class Entry:
    """One key as stored: its value and the revisions etcd (or the file store) gave it."""

    key: str
    value: Value
    revision: int  # of its last change
    create_revision: int


@dataclass(frozen=True)
class Change:
    """A key changed: its new value, or None when it went (deleted, or its lease expired)."""

    key: str
    value: Value | None
    revision: int


@dataclass(frozen=True)
class FencedWrite:
    """The outcome of a fenced write. ``ok`` only when it committed; ``unknown`` when the
    store did not answer (it may or may not have committed: never reported as written)."""

    ok: bool
    term: int | None
    revision: int | None = None
    reason: str | None = None
    unknown: bool = False


LeadershipListener = Callable[[bool, "int | None"], None]
ChangeListener = Callable[[Change], None]


class ClusterStore(ABC):
    """What the daemon's parts use of the cluster (the ``cluster`` port)."""

    backend = "abstract"

    def __init__(self, gateway: str) -> None:
        self.gateway = gateway
        self.is_leader = False
        self.term: int | None = None  # the current leadership term (as far as we know)
        self.leader: str | None = None  # the gateway that holds it
        self.refused = 0  # fenced writes the store refused (this gateway was not leader)
        self.last_refusal: str | None = None
        self._leadership: list[LeadershipListener] = []

    def on_leadership(self, listener: LeadershipListener) -> Callable[[], None]:
        """Call ``listener(is_leader, term)`` whenever this gateway gains or loses it."""
        self._leadership.append(listener)
        return lambda: (self._leadership.remove(listener)
                        if listener in self._leadership else None)

    def _set_leadership(self, is_leader: bool, term: int | None, leader: str | None,
                        why: str = "") -> None:
        changed = is_leader != self.is_leader or (is_leader and term != self.term)
        self.is_leader, self.term, self.leader = is_leader, term, leader
        if not changed:
            return
        if is_leader:
            log.info("gateway %s is the cluster leader (term %s)", self.gateway, term)
        else:
            log.warning("gateway %s stepped down%s", self.gateway, f": {why}" if why else "")
        for listener in list(self._leadership):
            try:
                listener(is_leader, term)
            except Exception:  # a listener bug must not stop the store
                log.exception("leadership listener failed")

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def get(self, key: str) -> Entry | None: ...

    @abstractmethod
    async def get_prefix(self, prefix: str) -> list[Entry]: ...

    @abstractmethod
    def watch_prefix(self, prefix: str, listener: ChangeListener) -> Callable[[], None]:
        """Deliver every key under ``prefix`` now, then each change; returns a cancel."""

    @abstractmethod
    async def put(self, key: str, value: Value) -> int:
        """Write one of this gateway's own keys (reports); returns the revision."""

    @abstractmethod
    async def publish(self, key: str, value: Value) -> int:
        """Write a key that lives only as long as this gateway does (telemetry)."""

    @abstractmethod
    async def fenced_put(self, items: dict[str, Value]) -> FencedWrite:
        """Write all ``items`` in one step, only while this gateway leads its term."""

    def watch_lease(self, who: str, lease: int | None) -> None:
        """Another gateway's lease (None: forget ``who``'s), to be ended as soon as it has
        expired; nothing to do where leases do not expire (standalone)."""
        return None

    def status(self) -> dict[str, Any]:
        return {"backend": self.backend, "gateway": self.gateway, "leader": self.leader,
                "term": self.term, "is_leader": self.is_leader, "refused": self.refused,
                "last_refusal": self.last_refusal}


class StandaloneStore(ClusterStore):
    """One gateway: in process, persisted to ``path`` (JSON), always the leader, term 1.
    Published (leased) keys live in memory only: they die with the process, as in etcd."""

    backend = "standalone"

    def __init__(self, gateway: str, path: Path | None) -> None:
        super().__init__(gateway)
        self.path = path
        self.revision = 0
        self._data: dict[str, Entry] = {}
        self._leased: set[str] = set()
        self._watchers: list[tuple[str, ChangeListener]] = []

    async def start(self) -> None:
        if self.path is not None and self.path.exists():
            try:
                raw = json.loads(self.path.read_text())
                self.revision = int(raw["revision"])
                for k, e in raw["keys"].items():
                    self._data[k] = Entry(k, e["value"], int(e["revision"]),
                                          int(e["create_revision"]))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise StoreFileError(f"{self.path}: not a cluster store file ({exc}); "
                                     f"move it away to start afresh") from exc
        self._set_leadership(True, 1, self.gateway)

    async def stop(self) -> None:
        self._watchers.clear()

    async def get(self, key: str) -> Entry | None:
        return self._data.get(key)

    async def get_prefix(self, prefix: str) -> list[Entry]:
        return [e for k, e in sorted(self._data.items()) if k.startswith(prefix)]

    def watch_prefix(self, prefix: str, listener: ChangeListener) -> Callable[[], None]:
        item = (prefix, listener)
        self._watchers.append(item)
        loop = asyncio.get_running_loop()
        for e in [e for k, e in sorted(self._data.items()) if k.startswith(prefix)]:
            loop.call_soon(listener, Change(e.key, e.value, e.revision))
        return lambda: self._watchers.remove(item) if item in self._watchers else None

    def _write(self, key: str, value: Value, leased: bool) -> int:
        self.revision += 1
        old = self._data.get(key)
        self._data[key] = Entry(key, value, self.revision,
                                old.create_revision if old else self.revision)
        if leased:
            self._leased.add(key)
        for prefix, listener in list(self._watchers):
            if key.startswith(prefix):
                listener(Change(key, value, self.revision))
        return self.revision

    def _persist(self) -> None:
        if self.path is None:
            return
        keys = {k: {"value": e.value, "revision": e.revision,
                    "create_revision": e.create_revision}
                for k, e in self._data.items() if k not in self._leased}
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps({"revision": self.revision, "keys": keys}))
        os.replace(tmp, self.path)

    async def put(self, key: str, value: Value) -> int:
        rev = self._write(key, value, leased=False)
        self._persist()
        return rev

    async def publish(self, key: str, value: Value) -> int:
        return self._write(key, value, leased=True)

    async def fenced_put(self, items: dict[str, Value]) -> FencedWrite:
        rev = 0
        for key, value in items.items():
            rev = self._write(key, value, leased=False)
        try:
            self._persist()
        except OSError as exc:  # committed here, but a restart would not see it: say so
            return FencedWrite(True, 1, rev, reason=f"not persisted to {self.path}: {exc}")
        return FencedWrite(True, 1, rev)


class StoreFileError(Exception):
    """The standalone store's file cannot be read (one line: path and why)."""
