"""Which API command serves which console feature, and which component provides it.

Screens never hard-code a command: they ask ``resolve(cap, available)`` and, when nothing
answers, say what is not available and what would provide it, in product words.
The first name in each list is the one the component registers; later names are aliases.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass


@dataclass(frozen=True)
class Cap:
    names: tuple[str, ...]
    component: str


CONTROL = "site control: add a control section to the site config"
ANALYTICS = "analytics: it runs with the historian on"
CLUSTER = "several gateways in a cluster, not part of this gateway yet"
CLUSTER_VIEW = ("several gateways in a cluster: a cluster section with backend etcd in the "
                "site config")
TRADING = "energy trading, not part of this gateway yet"

CAPS: dict[str, Cap] = {
    # site control (gateway/control/api_commands.py)
    "control_status": Cap(("control_status",), CONTROL),  # mode, strategies, limits, overrides
    "alarms": Cap(("alarms",), CONTROL),
    "ack": Cap(("alarm_ack",), CONTROL),  # {key}
    "audit": Cap(("audit",), CONTROL),
    "sessions": Cap(("ev_sessions",), CONTROL),  # {active: [...], history: [...]}
    "ev_set": Cap(("ev_set",), CONTROL),  # {charger, priority? departure_s? departure_in_h?}
    "strategy_set": Cap(("strategy_set",), CONTROL),  # {settings: {name: value}}
    "limits_set": Cap(("limits_set",), CONTROL),  # {import_limit_kw?, export_limit_kw?}
    "override_set": Cap(("override_set",), CONTROL),  # {device, point, value, duration_s?}
    "override_clear": Cap(("override_clear",), CONTROL),  # {device, point?}
    "estop": Cap(("emergency_stop",), CONTROL),  # {reason?}
    "mode": Cap(("mode_request",), CONTROL),  # {mode: island|reconnect|reset|black_start}
    "shed": Cap(("shed",), CONTROL),  # {load, duration_s?}
    "restore": Cap(("restore",), CONTROL),  # {load}: a load an operator shed
    # analytics (gateway/analytics/service.py)
    "forecast": Cap(("forecast",), ANALYTICS),  # {available, forecast: {target: {time, p50..}}}
    "anomalies": Cap(("anomalies",), ANALYTICS),  # [{device, signal, score, explanation, ts}]
    "battery_health": Cap(("battery_health",), ANALYTICS),  # {batteries, reports: {dev: ..}}
    "train": Cap(("analytics_train",), ANALYTICS),
    "training_status": Cap(("analytics_training",), ANALYTICS),  # {run, state, error?, ...}
    # cluster and trading
    "cluster": Cap(("cluster_status", "cluster"), CLUSTER),
    "cluster_view": Cap(("cluster_view",), CLUSTER_VIEW),  # gateway/cluster/view.py
    "orders": Cap(("order_book", "orders"), TRADING),
    "ledger": Cap(("ledger",), TRADING),
}


def resolve(cap: str, available: Container[str]) -> str | None:
    """The command that provides ``cap`` in this gateway, or None."""
    for name in CAPS[cap].names:
        if name in available:
            return name
    return None


def missing(cap: str) -> str:
    return f"not available here ({CAPS[cap].component})"
