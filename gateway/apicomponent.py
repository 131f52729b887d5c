"""The daemon component of the API's own features: the role/token policy from the
``console:`` section, and the ``summary_history`` and ``site_time`` commands the console
and ``autogrid status`` draw from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.apihistory import register
from gateway.apipolicy import ConsoleSettings, role_policy, token_policy
from gateway.sitetime import SiteTimeSource

if TYPE_CHECKING:
    from gateway.daemon import Daemon


class ConsolePolicy:
    """Daemon component: installs the role policy on the API (when configured) and the
    ``summary_history`` and ``site_time`` commands (nothing runs in the background)."""

    name = "console"

    def __init__(self, daemon: Daemon, settings: ConsoleSettings | None) -> None:
        self.daemon = daemon
        self.settings = settings
        self.site_time = SiteTimeSource(daemon.cfg.site.timezone)

    async def start(self) -> None:
        api = self.daemon.api
        if api is None:
            return
        register(self.daemon)
        api.register("site_time", lambda r, c: self.site_time.answer(), role="viewer",
                     help="the site clock (simulated in a simulation) and time zone")
        if self.settings is None:
            return
        api.role_of = role_policy(self.settings)
        if self.settings.tokens:
            api.token_caller = token_policy(self.settings)

    async def stop(self) -> None:
        pass


def component(daemon: Daemon) -> ConsolePolicy:
    return ConsolePolicy(daemon, getattr(daemon.cfg, "console", None))
