"""Typed meeting points of the daemon's parts, instead of finding each other by name.

The daemon holds one ``Ports``. Services it runs itself are set before any component
starts (``alarms``, like the historian); a component that offers something to others sets
its port in its constructor (``controller``, ``forecasts``) and the others read the port
when they use it, so the order of the component factories carries no meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.alarms import AlarmStore


class ControllerPort(Protocol):
    """What the scheduler and the demo use of the site controller."""

    plan: Any  # the plan the controller tracks (gateway.control.plan.Plan | None)
    sessions: Any  # its EV session book
    last: Any  # the setpoints of its last cycle (a new cluster leader seeds them)
    last_now: float | None  # when that cycle ran (control time)

    def outcome(self, o: Any) -> None: ...  # a write's outcome (WriteOutcome)


class ApplierPort(Protocol):
    """What the cluster uses of the control component's one write path."""

    on_outcome: list[Any]  # listeners of every write's outcome (WriteOutcome)

    def submit(self, setpoints: dict[str, dict[str, Any]], now: float | None = None) -> int: ...

    def command(self, dev_id: str, point: str, value: Any) -> Any: ...

    def cancel_command(self, dev_id: str, point: str, why: str) -> None: ...  # not retried


class ClusterPort(Protocol):
    """What the control component uses of the cluster: whether this gateway runs the site
    controller now, and where its setpoints and commands go (the store, fenced)."""

    def leading(self) -> bool: ...

    def leader_id(self) -> str | None: ...  # the gateway that leads, when known

    async def wait_leading(self, timeout_s: float) -> bool: ...  # True: leads now

    on_report: list[Any]  # listeners of remote devices' write outcomes (at the leader)

    def polled_elsewhere(self, dev_id: str) -> str | None: ...  # its gateway, if not this

    def follower_status(self, status: dict[str, Any]) -> dict[str, Any]: ...  # stored mode

    def site_alarms(self, own: list[dict[str, Any]]) -> list[dict[str, Any]]: ...

    async def forward(self, cmd: str, req: dict[str, Any], caller: Any,
                      to: str | None = None) -> Any: ...  # run by the leader (or ``to``)

    def dispatch(self, setpoints: dict[str, dict[str, Any]],
                 commands: list[tuple[str, str, Any]]) -> None: ...

    async def command(self, dev_id: str, point: str, value: Any, user: str
                      ) -> dict[str, Any]: ...  # one-shot, run once by the polling gateway


class ForecastPort(Protocol):
    """What the scheduler uses of analytics: the trained forecaster, if any yet."""

    forecaster: Any  # gateway.analytics.forecast.Forecaster | None


@dataclass
class Ports:
    """The daemon's typed ports (see the module docstring)."""

    alarms: AlarmStore | None = None  # alarms + audit (on when `control:` is set)
    controller: ControllerPort | None = None  # the site controller, when one runs here
    forecasts: ForecastPort | None = None  # analytics, when on
    applier: ApplierPort | None = None  # the write path (set by the control component)
    cluster: ClusterPort | None = None  # a multi-gateway cluster (backend etcd), when on
