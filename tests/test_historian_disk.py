"""The historian when the disk is full (SQLite's max_page_count makes it full for real,
deterministically) or its path cannot be used: polling goes on, the message names the
path, memory stays bounded, lost rows are counted and said, databases are not world-readable."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import sys
from pathlib import Path

import pytest

from gateway.config.models import Historian as HistorianConfig
from gateway.config.models import SiteConfig
from gateway.control.alarms import ControlStore
from gateway.daemon import Daemon
from gateway.historian import BUFFER_BATCHES, Historian
from gateway.model import Invalid, Nature, Quality, Reading
from gateway.state import DeviceState
from tests.test_cli import env_for
from tests.waiting import WAIT_S

BATCH = 10
KEEP_DAYS = 36500.0  # the rows below are from 2001: the flush task's retention keeps them


def readings(n: int, start: float = 1e9) -> list[dict[str, Reading]]:
    return [{"state": Reading(f"state text {i} " + "x" * 200, "", start + i)}
            for i in range(n)]


def fill(h: Historian, n: int, start: float = 1e9) -> None:
    for changed in readings(n, start):
        h.record("pv", changed)


def make_full(h: Historian) -> None:
    """No page can be added to the file any more: the next growing write is SQLITE_FULL."""
    db = h._db  # the historian's own connection: max_page_count is per connection
    assert db is not None
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")


def disk_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "autogrid.historian"]


async def test_disk_full_is_named_bounded_counted_and_survived(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "history.sqlite"
    h = Historian(HistorianConfig(path=path, batch_size=BATCH, flush_interval_s=3600,
                                  retention_days=KEEP_DAYS))
    await h.start()
    caplog.set_level(logging.INFO, logger="autogrid.historian")
    make_full(h)
    fill(h, 100)
    assert await h.flush() == 0  # refused, not raised
    assert h.disk_full and h.stats()["disk_full"] is True
    first = disk_messages(caplog)
    assert first == [f"historian: disk full writing {path} (100 rows kept in memory and "
                     "retried; polling goes on)"]
    fill(h, BUFFER_BATCHES * BATCH, start=2e9)  # more than the buffer holds
    await h.flush()
    assert len(h._buffer) == BUFFER_BATCHES * BATCH and h.dropped == 100
    fill(h, 5, start=3e9)
    await h.flush()
    assert h.dropped == 105
    messages = disk_messages(caplog)
    assert len(messages) == 2 and messages[1] == (
        f"historian buffer full ({BUFFER_BATCHES * BATCH} rows) while {path} cannot be "
        "written: dropping the oldest rows (1 lost so far)")  # said once, counted in stats
    lost = await h.stop()
    assert lost == BUFFER_BATCHES * BATCH and h.dropped == 105 + lost
    last = disk_messages(caplog)[-1]
    assert last == (f"historian stopped with {lost} rows not written to {path} (disk full); "
                    f"{105 + lost} rows lost in all")
    assert not any("rollback" in m for m in disk_messages(caplog))


async def test_writes_resume_when_space_comes_back(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "history.sqlite"
    h = Historian(HistorianConfig(path=path, batch_size=BATCH, flush_interval_s=3600,
                                  retention_days=KEEP_DAYS))
    await h.start()
    try:
        caplog.set_level(logging.INFO, logger="autogrid.historian")
        make_full(h)
        fill(h, 50)
        h.record("pv", {"p_kw": Reading(Invalid(65535, "all bits set").raw, "kW", 1e9,
                                        Quality.INVALID)})
        assert await h.flush() == 0
        assert h._db is not None
        h._db.execute("PRAGMA max_page_count = 1000000")
        assert await h.flush() == 51
        assert not h.disk_full and h.last_error is None
        assert disk_messages(caplog)[-1] == (f"historian writes to {path} recovered (0 rows "
                                             "lost meanwhile)")
        for name in (path, f"{path}-wal", f"{path}-shm"):  # not readable by every user
            assert os.stat(name).st_mode & 0o777 == 0o640, name
    finally:
        assert await h.stop() == 0
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT COUNT(*), MAX(quality) FROM samples").fetchone() == (51, 3)


async def test_unusable_database_paths_are_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"  # a path under a regular file fails even for root
    blocker.write_text("")
    h = Historian(HistorianConfig(path=blocker / "history.sqlite"))
    with pytest.raises(RuntimeError, match=rf"^historian database {blocker}/history.sqlite: "
                                           r"cannot open: "):
        await h.start()
    store = ControlStore(blocker / "control.sqlite")
    with pytest.raises(RuntimeError, match=rf"^control database {blocker}/control.sqlite: "
                                           r"cannot open: "):
        store.open()


async def test_status_shows_a_full_disk_while_the_daemon_keeps_serving(tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    cfg = SiteConfig.model_validate({
        "site": {"name": "disk"}, "gateways": [{"id": "gw1", "api_socket": str(sock)}],
        "historian": {"path": str(tmp_path / "history.sqlite"), "batch_size": BATCH,
                      "flush_interval_s": 3600}})
    daemon = Daemon(cfg)
    await daemon.start()
    try:
        assert daemon.historian is not None
        daemon.state.add_device(DeviceState("pv", Nature.PV_INVERTER, max_age_s=2.0))
        make_full(daemon.historian)
        for i, changed in enumerate(readings(20)):
            daemon.state.update("pv", {"state": changed["state"].value}, 1e9 + i)
        await daemon.historian.flush()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "status", "--socket", str(sock),
            env=env_for(tmp_path), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
        assert proc.returncode == 0, err
        assert (f"WARNING historian: disk full ({tmp_path / 'history.sqlite'}): 20 rows "
                "waiting, 0 rows lost") in out.decode()
    finally:
        await daemon.shutdown()
    assert daemon.stop_problems == [f"20 historian rows not written to "
                                    f"{tmp_path / 'history.sqlite'} (disk full)"]


async def test_disk_full_raises_an_alarm_that_clears_when_writes_recover(tmp_path: Path) -> None:
    from gateway.control.component import historian_alarm

    h = Historian(HistorianConfig(path=tmp_path / "history.sqlite", batch_size=BATCH,
                                  flush_interval_s=3600))
    await h.start()
    store = ControlStore(tmp_path / "control.sqlite")
    store.open()
    try:
        historian_alarm(store, h)
        assert "historian:write" not in store.alarms
        make_full(h)
        fill(h, 100)
        assert await h.flush() == 0
        historian_alarm(store, h)
        alarm = store.alarms["historian:write"]
        assert alarm.active and alarm.severity == "critical"
        assert alarm.message.startswith(f"disk full: cannot write {h.path}")
        db = h._db
        assert db is not None
        db.execute("PRAGMA max_page_count = 1000000")  # space again
        assert await h.flush() > 0
        historian_alarm(store, h)
        assert not store.alarms["historian:write"].active
    finally:
        store.close()
        await h.stop()


async def test_flush_waits_for_the_flush_task_under_way(tmp_path: Path) -> None:
    """A flush() called while the flush task writes a batch returns once that batch is
    readable, counting its rows (it used to find the buffer empty and return 0 at once)."""
    path = tmp_path / "history.sqlite"
    h = Historian(HistorianConfig(path=path, batch_size=BATCH, flush_interval_s=3600,
                                  retention_days=KEEP_DAYS))
    await h.start()
    try:
        h._db_lock.acquire()  # the writer thread will wait here: a slow disk
        try:
            fill(h, BATCH)  # a full batch wakes the flush task
            for _ in range(200):  # until the task has taken the batch
                if not h._buffer:
                    break
                await asyncio.sleep(0.01)
            assert not h._buffer
            mine = asyncio.create_task(h.flush())
            for _ in range(5):
                await asyncio.sleep(0)
            assert not mine.done()  # waits for the task's write, not "nothing to flush"
        finally:
            h._db_lock.release()
        assert await asyncio.wait_for(mine, WAIT_S) == BATCH
        with sqlite3.connect(path) as con:
            assert con.execute("SELECT COUNT(*) FROM samples").fetchone() == (BATCH,)
    finally:
        await h.stop()
