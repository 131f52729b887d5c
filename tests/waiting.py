"""Bounded waits for tests of asynchronous state (pollers, daemons, simulators).

A test waits for the very condition it asserts afterwards, never for a fixed time: on a
slow or loaded machine (CI) a fixed sleep is too short, on a fast one it is wasted. The
bound is generous because a passing wait returns as soon as the condition holds; it only
decides how long a failing test takes to say so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

WAIT_S = 30.0


async def until(pred: Callable[[], object], what: str, timeout_s: float = WAIT_S,
                interval_s: float = 0.02) -> None:
    """Return once ``pred()`` is true; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(interval_s)


async def until_async(pred: Callable[[], Awaitable[object]], what: str,
                      timeout_s: float = WAIT_S, interval_s: float = 0.02) -> None:
    """``until`` for a predicate that has to await (a read, a request)."""
    deadline = time.monotonic() + timeout_s
    while not await pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(interval_s)


def until_sync(pred: Callable[[], object], what: str, timeout_s: float = WAIT_S,
               interval_s: float = 0.1) -> None:
    """``until`` for synchronous tests (subprocesses, sockets)."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)
