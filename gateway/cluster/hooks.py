"""What a cluster part hooks into the daemon, undone in one place at its stop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def unhook(unsubs: list[Callable[[], None]], daemon: Any,
           outcome: Callable[[Any], None]) -> None:
    """End the part's store watches (emptying ``unsubs``) and take its listener off the
    applier's outcomes."""
    for unsub in unsubs:
        unsub()
    unsubs.clear()
    applier = daemon.ports.applier
    if applier is not None and outcome in applier.on_outcome:
        applier.on_outcome.remove(outcome)
