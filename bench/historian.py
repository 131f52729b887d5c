"""Historian storage: CPU, bytes stored and bytes written per row, three designs.

    python bench/historian.py [--points 2000] [--rows 1200000] [--batch 1000] [--rounds 3]
                              [--per-call 10] [--merge-rows N]
                              [--only before|direct|after|none]

All three write the same rows (``--points`` points, values changing every sample, one
transaction per batch as the flush does) into a fresh SQLite file in a temp dir:
"before" is the rowid table with REAL seconds and two indexes (SQLite's default
checkpoint); "direct" the compact format written straight into the keyed table at every
flush (WITHOUT ROWID, integer ms: the Historian's writer before staging, reproduced here
as a subclass); "after" the Historian as it is, which appends each flush to a staging
table and merges it into the keyed table every ``--merge-rows`` rows (default: what
``merge_interval_s`` gives at one row per point per second, i.e. the default cadence at
``--points`` points/s). The Historian sides get the rows as SiteState hands them over, one
call per device read with ``--per-call`` points. The measured CPU (every thread of this
process, user and kernel) includes the merges, the stop (its final merge) and a final
WAL checkpoint, on every side. Rounds rotate the order; printed: median and range of CPU
seconds per 100k rows, bytes per row stored (file after the checkpoint, its free pages
apart: after a merge the stage's, one merge's worth of rows), and bytes per
row written (``wchar`` of /proc/self/io: every write() to the WAL, the database and the
merge's temporary sort file, the flash wear figure at most; ``write_bytes`` less
``cancelled_write_bytes``, what reached the block layer, is printed too: the sort file is
deleted before writeback and never does), and the ratios to "before".

CPU seconds are noisy on a shared machine; instructions are not. ``--only`` runs one side
once (``none``: only build the rows) for counting under callgrind, e.g.
``valgrind --tool=callgrind python bench/historian.py --only after --rows 480000
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
from itertools import chain
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from gateway.config.models import Historian as HistorianConfig  # noqa: E402
from gateway.historian import ROWS_PER_INSERT, Historian, PointKey, Row  # noqa: E402
from gateway.historian_stage import insert_sql  # noqa: E402
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


Spent = tuple[float, float, int, int]  # user s, kernel s, wchar, write_bytes


def cpu_now() -> Spent:
    """(user, kernel) CPU seconds of this process so far, every thread included, and the
    bytes it has written (write syscalls; reaching the block layer)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    # write_bytes less what was cancelled: a deleted temporary file never reaches the disk
    return (ru.ru_utime, ru.ru_stime, int(io["wchar"]),
            int(io["write_bytes"]) - int(io["cancelled_write_bytes"]))


def spent(since: Spent) -> Spent:
    now = cpu_now()
    return (now[0] - since[0], now[1] - since[1], now[2] - since[2], now[3] - since[3])


def checkpoint(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


class DirectHistorian(Historian):
    """The writer before staging: each flush straight into the keyed table."""

    _MANY = insert_sql("history", ROWS_PER_INSERT)
    _ONE = insert_sql("history", 1)

    def _write(self, batch: list[Row], unresolved: int = 0) -> int:
        with self._db_lock:
            db = self._db
            assert db is not None
            new: dict[PointKey, int] = {}
            db.execute("BEGIN")
            if unresolved:
                batch = self._resolve(db, batch, new)
            whole = len(batch) - len(batch) % ROWS_PER_INSERT
            if whole:
                flat = chain.from_iterable(batch[:whole])
                db.executemany(self._MANY, zip(*[flat] * (5 * ROWS_PER_INSERT), strict=False))
            if whole < len(batch):
                db.executemany(self._ONE, batch[whole:])
            db.execute("COMMIT")
            for (device, point, _), pid in new.items():
                self._ids.setdefault(device, {})[point] = pid
            self.rows_written += len(batch)
            return len(batch)


def before(path: Path, data: list[tuple[str, dict[str, Reading]]], batch: int,
           merge_rows: int = 0) -> Spent:
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
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return spent(cpu0)


def historian(cls: type[Historian], path: Path, data: list[tuple[str, dict[str, Reading]]],
              batch: int, merge_rows: int) -> Spent:
    async def run() -> Spent:
        h = cls(HistorianConfig(path=path, flush_interval_s=3600, batch_size=batch,
                                merge_interval_s=3600, merge_rows=merge_rows))
        await h.start()
        cpu0 = cpu_now()
        pending = 0
        for device, changed in data:
            h.record(device, changed)
            pending += len(changed)
            if pending >= batch:  # the flush's own writer (its thread's CPU counts too)
                await h.flush()
                pending = 0
        await h.stop()  # the last flush and merge
        checkpoint(path)
        return spent(cpu0)

    return asyncio.run(run())


def direct(path: Path, data: list[tuple[str, dict[str, Reading]]], batch: int,
           merge_rows: int) -> Spent:
    return historian(DirectHistorian, path, data, batch, merge_rows)


def after(path: Path, data: list[tuple[str, dict[str, Reading]]], batch: int,
          merge_rows: int) -> Spent:
    return historian(Historian, path, data, batch, merge_rows)


SIDES = {"before": before, "direct": direct, "after": after}


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def free(path: Path) -> int:
    """Bytes of the file's free pages: after a merge, the stage's pages, which the next
    flushes reuse (one merge's worth of rows, however large the history grows)."""
    db = sqlite3.connect(path)
    n, page = (db.execute(f"PRAGMA {x}").fetchone()[0] for x in ("freelist_count",
                                                                   "page_size"))
    db.close()
    return int(n) * int(page)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--points", type=int, default=2000)
    ap.add_argument("--rows", type=int, default=1_200_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--per-call", type=int, default=10,
                    help="points per device read (one historian call each; 1: a call per row)")
    ap.add_argument("--merge-rows", type=int, default=None,
                    help="rows between merges (default: merge_interval_s x --points)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=(*SIDES, "none"),
                    help="run one side once (for instruction counts) and print nothing else")
    args = ap.parse_args()
    merge_rows = args.merge_rows or round(HistorianConfig().merge_interval_s * args.points)
    data = rows(args.points, args.rows, args.per_call)
    n = sum(len(c) for _, c in data)
    if args.only is not None:
        with tempfile.TemporaryDirectory(prefix="autogrid-hbench-") as tmp:
            if args.only != "none":
                SIDES[args.only](Path(tmp) / f"{args.only}.sqlite", data, args.batch,
                                 merge_rows)
        print(f"{args.only}: {n} rows of {args.points} points, {args.per_call} a call, "
              f"batches of {args.batch}, merges every {merge_rows} rows")
        return 0
    keys = ("cpu", "user", "kernel", "bytes", "free", "wchar", "written")
    res: dict[str, dict[str, list[float]]] = {k: {x: [] for x in keys} for k in SIDES}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="autogrid-hbench-") as tmp:
        for rnd in range(args.rounds):
            order = list(SIDES)[rnd % 3:] + list(SIDES)[:rnd % 3]
            for kind in order:
                path = Path(tmp) / f"{kind}{rnd}.sqlite"
                user, kernel, wchar, written = SIDES[kind](path, data, args.batch, merge_rows)
                r = res[kind]
                r["cpu"].append((user + kernel) / n * 100_000)
                r["user"].append(user / n * 100_000)
                r["kernel"].append(kernel / n * 100_000)
                r["bytes"].append((size(path) - free(path)) / n)
                r["free"].append(free(path) / n)
                r["wchar"].append(wchar / n)
                r["written"].append(written / n)
                load.append(os.getloadavg()[0])
    print(f"{n} rows of {args.points} points, {args.per_call} a call, batches of {args.batch}, "
          f"merges every {merge_rows} rows ({n // merge_rows} in a run"
          f"{', then the stop' + chr(39) + 's' if n % merge_rows else ''}), "
          f"{args.rounds} rounds; {time.strftime('%Y-%m-%d %H:%M')}, load "
          f"{min(load):.1f}-{max(load):.1f}")
    med = statistics.median
    for kind, r in res.items():
        print(f"  {kind:<7} CPU s/100k rows {med(r['cpu']):.3f} "
              f"({min(r['cpu']):.3f}..{max(r['cpu']):.3f}; user {med(r['user']):.3f}, "
              f"kernel {med(r['kernel']):.3f}), bytes/row stored {med(r['bytes']):.1f} "
              f"(+ {med(r['free']):.1f} free pages), "
              f"written {med(r['wchar']):.0f} ({min(r['wchar']):.0f}..{max(r['wchar']):.0f}; "
              f"block layer {med(r['written']):.0f})")
    for kind in ("direct", "after"):
        ratio = {k: med(res[kind][k]) / med(res["before"][k]) for k in keys if k != "free"}
        per_round = [a / b for a, b in zip(res[kind]["cpu"], res["before"]["cpu"], strict=True)]
        print(f"{kind}/before: CPU per row x{ratio['cpu']:.2f} (rounds "
              f"x{min(per_round):.2f}..x{max(per_round):.2f}; user x{ratio['user']:.2f}, "
              f"kernel x{ratio['kernel']:.2f}), bytes per row stored x{ratio['bytes']:.2f}, "
              f"written x{ratio['wchar']:.3f} (block layer x{ratio['written']:.3f}) "
              "(target <= 0.5 each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
