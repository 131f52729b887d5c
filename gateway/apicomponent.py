"""The daemon component of the API's own features: the role/token policy from the
``console:`` section and the ``summary_history`` command the console draws from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.apihistory import register
from gateway.apipolicy import ConsoleSettings, role_policy, token_policy

if TYPE_CHECKING:
    from gateway.daemon import Daemon


class ConsolePolicy:
    """Daemon component: installs the role policy on the API (when configured) and the
    console's ``summary_history`` command (nothing runs in the background)."""

    name = "console"

    def __init__(self, daemon: Daemon, settings: ConsoleSettings | None) -> None:
        self.daemon = daemon
        self.settings = settings

    async def start(self) -> None:
        api = self.daemon.api
        if api is None:
            return
        register(self.daemon)
        if self.settings is None:
            return
        api.role_of = role_policy(self.settings)
        if self.settings.tokens:
            api.token_caller = token_policy(self.settings)

    async def stop(self) -> None:
        pass


def component(daemon: Daemon) -> ConsolePolicy:
    return ConsolePolicy(daemon, getattr(daemon.cfg, "console", None))
