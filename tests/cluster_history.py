"""A history checker for the cluster tests: replays the store's whole history (etcd keeps
every revision until compaction) and checks fencing and acknowledgements against it, and
checks what the devices themselves saw (the simulator's write journal) against that
history, so the gateways under test are not their own witnesses.

The store (``check_history``):
- Every setpoint/command revision carries the term that was current when it committed
  (the create revision of the leader key alive at that revision), and names that term's
  leader as writer: no stale-term write ever committed.
- Ownership records (``owners/<device>``) likewise carry the current term and its leader.
- Every write a gateway acknowledged is in the history at its revision, with its term, and
  each gateway's acknowledgements are in increasing revision order.

The devices (``check_device_writes``): every write request that reached a simulated
device, attributed to a gateway by the device alone (the peer address of its connection:
each gateway connects from its own ``source_address``). All processes share one host
clock, so the journal's wall times and the times the leader stamps into the store
(``at`` of setpoints and commands, ``since`` of ownership records, both taken just
before the commit) are compared directly. Exact rules (no tolerance in time):
- Every write comes from a known gateway's address.
- Who may write: a device without ``owners/`` records only from its configured gateway.
  A device with records: at time t, the newest record whose ``since`` <= t names the
  writer; or (a hand-over while the old holder is alive: handback, operator move) the
  record before it named the writer, the new holder has not written the device since
  the newer record, and t < its ``since`` + ``grace_s``. A record made because the
  holder's lease ended admits no such tail: that holder let go (0.75 TTL) before its lease
  could expire, before the leader could see it gone and stamp the record. A write before
  the first record is a violation (a standby-capable device waits for its record).
- What: each point value written equals (within the register resolution, ``tol``) a value
  committed for that device and point (setpoints or commands) with ``at`` <= t.
With a grace (``grace_s``, default: the lease TTL; a bound on watch delivery plus one
applier write, not a measured figure):
- When: of the commits with that value, the newest before t must still have been current
  at t - ``grace_s`` (its successor, if any, stamped later). A value superseded in the store
  for longer, in particular by a newer term's value, is a stale write. Since every commit
  carries the term current when it committed (``check_history``), a write passing this
  came from the term current within ``grace_s`` of reaching the device.
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


@dataclass
class DeviceWritesChecked:
    writes: dict[str, int]  # gateway -> device writes checked
    max_lag_s: float  # longest a written value had been superseded in the store (0: never)
    tails: int  # writes by an old holder after a live hand-over's record, before the new one
    terms: dict[int, int]  # term -> writes whose value that term had committed


@dataclass
class _Commit:
    at: float
    term: int
    revision: int
    value: Any


def _same_value(a: Any, b: Any, tol: float) -> bool:
    """Equal as the device would store it: numbers within ``tol`` (register resolution;
    float32 keeps ~7 digits), booleans and 0/1 alike, anything else exactly."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool | int) and isinstance(b, bool | int) and bool(a) == bool(b)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return abs(float(a) - float(b)) <= tol + 1e-6 * abs(float(b))
    return bool(a == b)


def _commits(events: list[Event]) -> dict[tuple[str, str], list[_Commit]]:
    """(device, point) -> every committed value for it, in revision order."""
    out: dict[tuple[str, str], list[_Commit]] = {}
    for ev in events:
        v = ev.value
        if v is None:
            continue
        if ev.key.startswith("setpoints/"):
            dev = ev.key.removeprefix("setpoints/")
            for point, value in (v.get("points") or {}).items():
                out.setdefault((dev, point), []).append(
                    _Commit(float(v["at"]), int(v["term"]), ev.revision, value))
        elif ev.key.startswith("commands/"):
            dev = ev.key.removeprefix("commands/")
            out.setdefault((dev, str(v["point"])), []).append(
                _Commit(float(v["at"]), int(v["term"]), ev.revision, v.get("value")))
    return out


def check_device_writes(events: list[Event], rows: list[Any], peers: dict[str, str],
                        configured: dict[str, str], *, grace_s: float,
                        tol: float = 1e-3) -> DeviceWritesChecked:
    """Check the devices' write journal (``sim_devices.journal.WriteRecord`` rows) against
    the store's history; rules in the module docstring. ``peers``: gateway -> its source
    address; ``configured``: device -> its configured gateway. Raises AssertionError on
    the first violation."""
    by_ip = {ip: gw for gw, ip in peers.items()}
    records: dict[str, list[tuple[float, str, str]]] = {}  # device -> (since, gateway, why)
    for ev in events:
        if ev.key.startswith("owners/") and ev.value is not None:
            records.setdefault(ev.key.removeprefix("owners/"), []).append(
                (float(ev.value["since"]), str(ev.value["gateway"]),
                 str(ev.value.get("why") or "")))
    commits = _commits(events)
    writes: dict[str, int] = {}
    last_by: dict[tuple[str, str], float] = {}  # (device, gateway) -> its latest write
    max_lag, tails = 0.0, 0
    terms: dict[int, int] = {}
    for row in sorted(rows, key=lambda r: r.at):
        t, dev = row.at, row.device
        what = f"write to {dev} at {t:.3f} ({row.points})"
        gw = by_ip.get(row.peer[0]) if row.peer else None
        assert gw is not None, f"{what} came from {row.peer}: no gateway connects from there"
        recs = records.get(dev)
        if recs is None:
            assert configured.get(dev) == gw, \
                f"{what} by {gw}; {dev} belongs to {configured.get(dev)} and was never moved"
        else:
            k = max((i for i, r in enumerate(recs) if r[0] <= t), default=None)
            assert k is not None, f"{what} by {gw} before any ownership record of {dev} " \
                                  f"(first: {recs[0]})"
            since, holder, why = recs[k]
            if holder != gw:
                prev = recs[k - 1][1] if k > 0 else None
                assert prev == gw, f"{what} by {gw}; the record then named {holder} " \
                                   f"(since {since:.3f}, {why}), the one before {prev}"
                assert "lease ended" not in why, (
                    f"{what} by {gw} {t - since:.3f} s after {dev} moved to {holder} because "
                    f"{why}: a holder lets go before its lease can expire")
                started = last_by.get((dev, holder), float("-inf")) >= since
                assert not started and t < since + grace_s, (
                    f"{what} by {gw} {t - since:.3f} s after {dev} moved to {holder} "
                    f"({why}){'; ' + holder + ' had written it already' if started else ''}")
                tails += 1
        last_by[(dev, gw)] = t
        term = None
        for point, value in row.points.items():
            stream = commits.get((dev, point), [])
            idx = max((i for i, c in enumerate(stream)
                       if c.at <= t and _same_value(c.value, value, tol)), default=None)
            assert idx is not None, (
                f"{what} by {gw}: {point}={value!r} was never committed for {dev} before "
                f"(last committed: {[(c.revision, c.value) for c in stream if c.at <= t][-3:]})")
            if idx + 1 < len(stream) and stream[idx + 1].at <= t:
                c, nxt = stream[idx], stream[idx + 1]
                lag = t - nxt.at
                max_lag = max(max_lag, lag)
                assert lag <= grace_s, (
                    f"{what} by {gw}: {point}={value!r} of term {c.term} (revision "
                    f"{c.revision}) was superseded {lag:.3f} s before by {nxt.value!r} of "
                    f"term {nxt.term} (revision {nxt.revision})"
                    + (": a stale-term write" if nxt.term != c.term else ""))
            term = max(term or 0, stream[idx].term)
        writes[gw] = writes.get(gw, 0) + 1
        if term is not None:
            terms[term] = terms.get(term, 0) + 1
    return DeviceWritesChecked(writes, max_lag, tails, terms)
