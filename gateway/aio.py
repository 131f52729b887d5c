"""asyncio helpers the daemon relies on for clean shutdowns."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger("autogrid.aio")


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object]], limit_s: float = 10.0) -> None:
    """Cancel tasks and wait until they have ended.

    On Python 3.11 ``asyncio.wait_for`` can swallow a cancellation when its inner future
    completes at the same moment (fixed in 3.12), so a single ``cancel()`` may be lost
    inside a library. Re-cancel until every task is done, or give up after ``limit_s``.
    """
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
        if pending and loop.time() > deadline:
            log.error("tasks did not stop within %.0f s: %s", limit_s,
                      ", ".join(t.get_name() for t in pending))
            return


def cancel_requested() -> bool:
    """True when the current task has a cancellation pending that something swallowed."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
