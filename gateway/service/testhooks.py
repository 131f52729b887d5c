"""Debug API commands for tests, registered only when AUTOGRID_TEST_HOOKS=1.

``debug.block_loop {seconds}`` blocks the event loop on purpose (a stand-in for a stuck
driver or a CPU-bound call on the loop), so a test can see the watchdog pings stop.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from gateway.api import ApiError, Caller

if TYPE_CHECKING:
    from gateway.daemon import Daemon

log = logging.getLogger("autogrid.service")

MAX_BLOCK_S = 30.0


def install_test_hooks(daemon: Daemon) -> None:
    if daemon.api is None:
        return
    log.warning("AUTOGRID_TEST_HOOKS=1: debug commands enabled (never on a real site)")

    def block_loop(req: dict[str, Any], caller: Caller) -> Any:
        seconds = req.get("seconds")
        if not isinstance(seconds, int | float) or not 0 < seconds <= MAX_BLOCK_S:
            raise ApiError(f"'seconds' must be a number in (0, {MAX_BLOCK_S:g}]")
        log.warning("blocking the event loop for %.1f s (test hook)", seconds)
        t0 = time.monotonic()
        time.sleep(float(seconds))  # on purpose: this is the stuck loop under test
        return {"blocked_s": time.monotonic() - t0}

    daemon.api.register("debug.block_loop", block_loop, role="engineer",
                        help="block the event loop for {seconds} (test hook)")
