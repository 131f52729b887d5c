"""Optional parts of the daemon (control, metrics, analytics, ...) as pluggable components.

A component is started after the devices, historian, alarms and API are up, and stopped,
in reverse order, before them. It registers its API commands on ``daemon.api``, listens to
``daemon.state`` and meets the others through ``daemon.ports`` (typed: the alarm service,
the controller, the forecasts), never by name, so their order here carries no meaning
beyond the first entry. To add one, append a factory to ``FACTORIES`` (one line): a
function of the daemon that returns a Component, or None when its config section leaves
it off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.config.models import SiteConfig


class Component(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


# Each entry: "module:function". Imported lazily so a component's dependencies load only
# when it is used.
FACTORIES: list[str] = [
    "gateway.apicomponent:component",  # API roles/tokens from `console:` (first: no gap)
    "gateway.service.metrics:build",  # Prometheus endpoint, when `metrics:` is set
    "gateway.cluster.component:build",  # multi-gateway cluster (backend etcd); before control
    "gateway.control.component:build",  # protection + site controller, when `control:` is set
    "gateway.analytics.service:build",  # forecasts, anomalies, battery health (with historian)
    "gateway.control.scheduler_component:build",  # LP plan for the controller (`tariff:`)
]


def _analytics_wanted(cfg: SiteConfig) -> bool:
    return cfg.historian.enabled and (cfg.analytics is None or cfg.analytics.enabled)


def _scheduler_wanted(cfg: SiteConfig) -> bool:
    return cfg.scheduler.enabled if cfg.scheduler is not None else cfg.tariff is not None


# A component whose module is heavy to import (pandas, scikit-learn, scipy) is imported
# only when this light check of the config says it may be on; its factory still decides.
GATES: dict[str, Callable[[SiteConfig], bool]] = {
    "gateway.analytics.service:build": _analytics_wanted,
    "gateway.control.scheduler_component:build": _scheduler_wanted,
}
