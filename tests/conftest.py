"""Shared fixtures. Every test is checked for leaked asyncio tasks and threads."""

from __future__ import annotations

import asyncio
import gc
import inspect
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _describe(task: asyncio.Task[object]) -> str:
    return f"{task.get_name()} ({task.get_coro()!r})"


def _leaked_threads(before: set[threading.Thread], grace_s: float = 3.0) -> list[str]:
    deadline = time.monotonic() + grace_s
    while True:
        leaked = [t for t in set(threading.enumerate()) - before if t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            return [t.name for t in leaked]
        time.sleep(0.05)


@pytest.fixture
async def _async_leak_check() -> AsyncIterator[None]:
    threads_before = set(threading.enumerate())
    before = set(asyncio.all_tasks())
    yield
    deadline = time.monotonic() + 2.0
    while True:
        current = asyncio.current_task()
        leaked = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
        if not leaked or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    for t in leaked:
        t.cancel()
    # asyncio.to_thread workers belong to the loop; end them before threads are counted.
    await asyncio.get_running_loop().shutdown_default_executor()
    if leaked:
        pytest.fail("test leaked asyncio tasks: " + "; ".join(_describe(t) for t in leaked))
    # The grace for threads runs the loop: grpc lets a cancelled call (and with it its
    # channel and poller thread) go only once the loop has run that call's callbacks.
    deadline = time.monotonic() + 3.0
    while _leaked_threads(threads_before, grace_s=0.0) and time.monotonic() < deadline:
        gc.collect()
        await asyncio.sleep(0.05)
    threads = _leaked_threads(threads_before, grace_s=0.0)
    if threads:
        pytest.fail("test leaked threads: " + ", ".join(threads))


@pytest.fixture(autouse=True)
def _leak_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves asyncio tasks or threads behind."""
    if inspect.iscoroutinefunction(getattr(request, "function", None)):
        request.getfixturevalue("_async_leak_check")  # checks tasks and threads itself
        yield
        return
    before = set(threading.enumerate())
    yield
    threads = _leaked_threads(before)
    if threads:
        pytest.fail("test leaked threads: " + ", ".join(threads))
