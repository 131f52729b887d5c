"""Historian storage: bytes and CPU per row, the compact format against the one before it.

    python bench/historian.py [--points 20000] [--rows 400000] [--batch 1000] [--rounds 3]
                              [--per-call 10] [--only before|after|none]

Both write the same rows (``--points`` points, values changing every sample, one
transaction per batch as the flush does; the Historian gets them as SiteState hands them
over, one call per device read with ``--per-call`` points) into a fresh SQLite file in a
temp dir: "before" is the rowid table with REAL seconds and two indexes, "after" the
Historian's own writer (WITHOUT ROWID, integer ms). Rounds alternate; printed: median and
range of CPU seconds (user and kernel) per 100k rows and bytes per row (file + WAL after
a checkpoint), and the ratios.

CPU seconds are noisy on a shared machine; instructions are not. ``--only`` runs one side
once (``none``: only build the rows) for counting under callgrind, e.g.
``valgrind --tool=callgrind python bench/historian.py --only after --rows 200000
--points 2000``; a side's instructions per row are its total minus ``none``'s, over the
rows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from gateway.config.models import Historian as HistorianConfig  # noqa: E402
from gateway.historian import Historian  # noqa: E402
from gateway.model import Quality, Reading  # noqa: E402

OLD_SCHEMA = """
CREATE TABLE points (id INTEGER PRIMARY KEY, device TEXT NOT NULL, point TEXT NOT NULL,
                     unit TEXT NOT NULL DEFAULT '', UNIQUE (device, point));
CREATE TABLE samples (point_id INTEGER NOT NULL REFERENCES points(id), ts REAL NOT NULL,
                      value REAL, text TEXT, quality INTEGER NOT NULL);
CREATE INDEX samples_ts ON samples (ts);
CREATE INDEX samples_point_ts ON samples (point_id, ts);
"""


def rows(points: int, n: int, per_call: int = 10) -> list[tuple[str, dict[str, Reading]]]:
    """What SiteState announces to the historian over n / points polls of every point:
    one call per device read, with its ``per_call`` changed points read at one time."""
    t0 = time.time()
    out = []
    for k in range(n // points):
        for d in range(points // per_call):
            ts = t0 + k + d * 1e-4
            out.append((f"dev{d}", {f"p{i}_kw": Reading(
                float(k * 7 + d * per_call + i) * 0.01, "kW", ts, Quality.GOOD)
                for i in range(per_call)}))
    return out


def cpu_now() -> tuple[float, float]:
    """(user, kernel) CPU seconds of this process so far, every thread included."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


def spent(since: tuple[float, float]) -> tuple[float, float]:
    now = cpu_now()
    return now[0] - since[0], now[1] - since[1]


def before(path: Path, data: list[tuple[str, dict[str, Reading]]], batch: int
           ) -> tuple[float, float]:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(OLD_SCHEMA)
    ids: dict[tuple[str, str], int] = {}
    cpu0 = cpu_now()
    flat = [(d, p, r) for d, ch in data for p, r in ch.items()]
    for i in range(0, len(flat), batch):
        db.execute("BEGIN")
        for d, p, r in flat[i:i + batch]:
            if (d, p) not in ids:
                db.execute("INSERT OR IGNORE INTO points (device, point, unit) VALUES (?,?,?)",
                           (d, p, r.unit))
                ids[(d, p)] = db.execute("SELECT id FROM points WHERE device=? AND point=?",
                                         (d, p)).fetchone()[0]
        db.executemany("INSERT INTO samples VALUES (?,?,?,?,?)",
                       [(ids[(d, p)], r.ts, float(r.value), None, 0)  # type: ignore[arg-type]
                        for d, p, r in flat[i:i + batch]])
        db.execute("COMMIT")
    cpu = spent(cpu0)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return cpu


def after(path: Path, data: list[tuple[str, dict[str, Reading]]], batch: int
          ) -> tuple[float, float]:
    async def run() -> tuple[float, float]:
        h = Historian(HistorianConfig(path=path, flush_interval_s=3600, batch_size=batch))
        await h.start()
        cpu0 = cpu_now()
        pending = 0
        for device, changed in data:
            h.record(device, changed)
            pending += len(changed)
            if pending >= batch:  # the flush's own writer (its thread's CPU counts too)
                await h.flush()
                pending = 0
        await h.flush()
        cpu = spent(cpu0)
        await h.stop()
        return cpu

    cpu = asyncio.run(run())
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return cpu


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--points", type=int, default=20000)
    ap.add_argument("--rows", type=int, default=400000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--per-call", type=int, default=10,
                    help="points per device read (one historian call each; 1: a call per row)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=("before", "after", "none"),
                    help="run one side once (for instruction counts) and print nothing else")
    args = ap.parse_args()
    data = rows(args.points, args.rows, args.per_call)
    n = sum(len(c) for _, c in data)
    if args.only is not None:
        with tempfile.TemporaryDirectory(prefix="autogrid-hbench-") as tmp:
            if args.only != "none":
                path = Path(tmp) / f"{args.only}.sqlite"
                (before if args.only == "before" else after)(path, data, args.batch)
        print(f"{args.only}: {n} rows of {args.points} points, {args.per_call} a call, "
              f"batches of {args.batch}")
        return 0
    res: dict[str, dict[str, list[float]]] = {k: {"cpu": [], "user": [], "kernel": [],
                                                  "bytes": []} for k in ("before", "after")}
    with tempfile.TemporaryDirectory(prefix="autogrid-hbench-") as tmp:
        for rnd in range(args.rounds):
            for kind in (("before", "after") if rnd % 2 == 0 else ("after", "before")):
                path = Path(tmp) / f"{kind}{rnd}.sqlite"
                user, kernel = (before if kind == "before" else after)(path, data, args.batch)
                res[kind]["cpu"].append((user + kernel) / n * 100_000)
                res[kind]["user"].append(user / n * 100_000)
                res[kind]["kernel"].append(kernel / n * 100_000)
                res[kind]["bytes"].append(size(path) / n)
    print(f"{n} rows of {args.points} points, {args.per_call} a call, batches of {args.batch}, "
          f"{args.rounds} rounds; "
          f"{time.strftime('%Y-%m-%d %H:%M')}, load {os.getloadavg()[0]:.1f}")
    med = statistics.median
    for kind, r in res.items():
        print(f"  {kind:<7} CPU s/100k rows {med(r['cpu']):.3f} "
              f"({min(r['cpu']):.3f}..{max(r['cpu']):.3f}; user {med(r['user']):.3f}, "
              f"kernel {med(r['kernel']):.3f}), bytes/row {med(r['bytes']):.1f}")
    ratio = {k: med(res["after"][k]) / med(res["before"][k])
             for k in ("cpu", "user", "kernel", "bytes")}
    print(f"after/before: CPU per row x{ratio['cpu']:.2f} (user x{ratio['user']:.2f}, kernel "
          f"x{ratio['kernel']:.2f}), bytes per row x{ratio['bytes']:.2f} (target <= 0.5 each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
