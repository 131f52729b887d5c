"""A history checker for the cluster tests: replays the store's whole history (etcd keeps
every revision until compaction) and checks fencing and acknowledgements against it.

- Every setpoint/command revision carries the term that was current when it committed
  (the create revision of the leader key alive at that revision), and names that term's
  leader as writer: no stale-term write ever committed.
- Ownership records (``owners/<device>``) likewise carry the current term and its leader.
- Every write a gateway acknowledged is in the history at its revision, with its term, and
  each gateway's acknowledgements are in increasing revision order.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aetcd


@dataclass
class Event:
    revision: int
    key: str
    value: dict[str, Any] | None  # None: deleted
    create_revision: int


async def read_history(endpoint: tuple[str, int], prefix: str,
                       limit_s: float = 30.0) -> list[Event]:
    """Every change under ``prefix`` from revision 1 to now, in order. "Now" is a marker
    key written here: the history ends at its revision (all of every earlier one read)."""
    client = aetcd.Client(*endpoint)
    try:
        marker = f"{prefix}/_history_marker".encode()
        now = (await client.put(marker, b"{}")).header.revision
        events: list[Event] = []
        watch = await client.watch_prefix(prefix.encode(), start_revision=1)

        async def collect() -> None:
            async for ev in watch:
                if ev.kv.key == marker:
                    if ev.kv.mod_revision >= now:
                        return
                    continue
                value = None if ev.kind == "DELETE" else json.loads(ev.kv.value)
                events.append(Event(int(ev.kv.mod_revision),
                                    ev.kv.key.decode()[len(prefix) + 1:], value,
                                    int(ev.kv.create_revision)))
        try:
            await asyncio.wait_for(collect(), limit_s)
        finally:
            await watch.cancel()
        return events
    finally:
        await client.close()


@dataclass
class Checked:
    writes: int  # setpoint/command key revisions seen
    terms: list[tuple[int, str]]  # (term, leader) in order


def check_history(events: list[Event], acked: dict[str, list[dict[str, Any]]]) -> Checked:
    """Raise AssertionError on the first violation; return what was checked."""
    term: int | None = None
    leader: str | None = None
    terms: list[tuple[int, str]] = []
    by_rev: dict[tuple[int, str], Event] = {}
    writes = 0
    for ev in events:
        if ev.key == "leader":
            if ev.value is None:
                term, leader = None, None
            else:
                term, leader = ev.create_revision, str(ev.value.get("gateway"))
                if not terms or terms[-1][0] != term:
                    terms.append((term, leader))
            continue
        if ev.key.startswith(("setpoints/", "commands/", "owners/", "site/", "audit/")) \
                and ev.value is not None:  # every fenced key
            writes += 1
            assert term is not None, f"{ev.key} written at revision {ev.revision} with no " \
                                     f"leader alive"
            assert ev.value.get("term") == term, (
                f"{ev.key} at revision {ev.revision} carries term {ev.value.get('term')} "
                f"but term {term} ({leader}) was current")
            assert ev.value.get("writer") == leader, (
                f"{ev.key} at revision {ev.revision} written by {ev.value.get('writer')}, "
                f"leader was {leader}")
            by_rev[(ev.revision, ev.key)] = ev
    for gw, rows in acked.items():
        revs = [r["revision"] for r in rows]
        assert revs == sorted(revs) and len(set(revs)) == len(revs), \
            f"{gw}'s acknowledged writes are not in revision order: {revs}"
        for r in rows:
            for key in r["keys"]:
                ev = by_rev.get((r["revision"], key))
                near = [(e.revision, e.key, e.value and e.value.get("term"))
                        for e in events if abs(e.revision - r["revision"]) <= 2]
                assert ev is not None, f"{gw} acknowledged {key} at revision " \
                                       f"{r['revision']}, not in the store's history " \
                                       f"(near it: {near})"
                assert ev.value is not None and ev.value.get("term") == r["term"]
    return Checked(writes, terms)


def held_periods(rows: list[dict[str, Any]], deaths: list[float]
                 ) -> dict[str, list[tuple[float, float]]]:
    """device -> [(from, to)] a gateway held it, from its ``<gw>.cluster-owned.jsonl``
    rows; a period still open when the process was killed (``deaths``: wall times) ends
    there, one still open at the end ends at +inf."""
    out: dict[str, list[tuple[float, float]]] = {}
    start: dict[str, float] = {}
    kills = sorted(deaths)
    for r in sorted(rows, key=lambda r: float(r["at"])):
        dev, at = str(r["device"]), float(r["at"])
        for d, t0 in list(start.items()):  # a kill between: that period ended there
            died = next((k for k in kills if t0 <= k <= at), None)
            if died is not None:
                out.setdefault(d, []).append((t0, died))
                del start[d]
        if r["event"] == "attach":
            assert dev not in start, f"{dev} attached twice at {at} without a detach"
            start[dev] = at
        elif r["event"] == "detach" and dev in start:
            out.setdefault(dev, []).append((start.pop(dev), at))
    for dev, t0 in start.items():
        died = next((k for k in kills if k >= t0), float("inf"))
        out.setdefault(dev, []).append((t0, died))
    return out


def check_ownership(logs: dict[str, list[dict[str, Any]]],
                    deaths: dict[str, list[float]]) -> dict[str, int]:
    """No two gateways held (polled) one device at the same time, and every write a gateway
    made to a standby-capable device fell in a period it held it. Returns writes per
    gateway checked."""
    periods = {gw: held_periods(rows, deaths.get(gw, [])) for gw, rows in logs.items()}
    devices = {d for p in periods.values() for d in p}
    for dev in devices:
        spans = sorted((t0, t1, gw) for gw, p in periods.items() for t0, t1 in p.get(dev, []))
        end, who = float("-inf"), ""
        for b0, b1, gb in spans:  # each starts after every earlier one ended
            assert b0 >= end, f"{dev} held by {who} until {end:.3f} and by {gb} from " \
                              f"{b0:.3f}: overlap of {end - b0:.3f} s"
            if b1 >= end:
                end, who = b1, gb
    writes: dict[str, int] = {}
    for gw, rows in logs.items():
        for r in rows:
            if r["event"] != "write":
                continue
            at, dev = float(r["at"]), str(r["device"])
            inside = any(t0 <= at <= t1 for t0, t1 in periods[gw].get(dev, []))
            assert inside, f"{gw} wrote {dev} at {at:.3f} outside the periods it held it: " \
                           f"{periods[gw].get(dev)}"
            writes[gw] = writes.get(gw, 0) + 1
    return writes
