"""The strategy interface."""

from __future__ import annotations

from typing import Protocol

from gateway.control.context import Decision, Site


class Strategy(Protocol):
    """A strategy may also declare ``reads`` / ``writes``: the ``site.handoff`` fields it
    takes from an earlier strategy or gives a later one (checked by check_handoffs). One
    with settings is built with its own config section (``<name>_config.py``, given by
    ``pipeline``) and reads its switch and parameters there, not from the Site."""

    name: str

    def enabled(self, site: Site) -> bool:
        """Whether it runs this cycle (its config switch, the mode, the data it needs)."""

    def apply(self, site: Site, d: Decision) -> None:
        """Edit the decision."""
