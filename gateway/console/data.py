"""What the console knows about the site, fed by the bridge, read by the screens.

Pure data, no urwid: the subscription's point changes, the summary with an hour of history
for the sparklines, statistics, the caller's role and commands, and the last answer of each
feature command (alarms, EV sessions, ...), kept with its time or its error.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from gateway.sitetime import SiteClock

HISTORY_KEYS = ("grid_kw", "pv_kw", "wind_kw", "battery_kw", "ev_kw", "load_kw",
                "battery_soc_pct")
HISTORY_S = 3600.0
HISTORY_STEP_S = 2.0


@dataclass
class Answer:
    """The last answer of a feature command: result, or the reason it failed."""

    ts: float
    result: Any = None
    error: str | None = None


@dataclass
class ConsoleData:
    ping: dict[str, Any] = field(default_factory=dict)
    commands: dict[str, dict[str, Any]] = field(default_factory=dict)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    answers: dict[str, Answer] = field(default_factory=dict)
    history: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)
    connected: bool = False
    problem: str | None = None
    updates: int = 0
    points_changed: int = 0
    last_update: float | None = None
    version: int = 0  # bumped on every change; the UI redraws when it moved
    seeded: bool = False  # history loaded from the historian
    clock: SiteClock = field(default_factory=SiteClock)

    # -- who am I -------------------------------------------------------------------------

    @property
    def role(self) -> str:
        return str(self.ping.get("role", "viewer"))

    @property
    def user(self) -> str:
        return str(self.ping.get("user", "?"))

    def allowed(self, cmd: str) -> tuple[bool, str]:
        """May this caller use ``cmd``? If not, the reason in words."""
        c = self.commands.get(cmd)
        if c is None:
            return False, f"the gateway has no '{cmd}' command"
        if c.get("allowed"):
            return True, ""
        return False, (f"{self.user} is {self.role}; this needs the {c.get('role')} role "
                       f"(roles are set in the config's console section)")

    # -- feeding --------------------------------------------------------------------------

    def set_snapshot(self, snap: dict[str, Any]) -> None:
        self.devices = {d: dict(v) for d, v in snap.get("devices", {}).items()}
        if "summary" in snap:
            self.set_summary(snap["summary"])
        self.version += 1

    def set_devices(self, rows: list[dict[str, Any]]) -> None:
        """Device list (health, errors) merged into the devices we hold."""
        for row in rows:
            dev = self.devices.setdefault(row["id"], {"points": {}})
            dev.update({k: v for k, v in row.items() if k != "points"})
        self.version += 1

    def apply_update(self, event: dict[str, Any]) -> int:
        """One subscription event; returns how many points changed."""
        n = 0
        for dev_id, points in event.get("changes", {}).items():
            dev = self.devices.setdefault(dev_id, {"id": dev_id, "points": {}})
            pts = dev.setdefault("points", {})
            for name, reading in points.items():
                pts[name] = reading
                n += 1
            ts = max((r.get("ts") or 0 for r in points.values()), default=0)
            if any(r.get("quality") == "good" for r in points.values()):
                dev["last_ok"] = max(dev.get("last_ok") or 0, ts)
        for dev_id, quality in event.get("health", {}).items():
            self.devices.setdefault(dev_id, {"id": dev_id, "points": {}})["quality"] = quality
        self.updates += 1
        self.points_changed += n
        self.last_update = event.get("ts") or time.time()
        self.version += 1
        return n

    def set_summary(self, summary: dict[str, Any], now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.summary = summary
        for key in HISTORY_KEYS:
            v = summary.get(key)
            if not isinstance(v, int | float) or isinstance(v, bool):
                continue
            h = self.history.setdefault(key, deque())
            if h and now - h[-1][0] < HISTORY_STEP_S:
                continue
            h.append((now, float(v)))
            while h and now - h[0][0] > HISTORY_S:
                h.popleft()
        self.version += 1

    def seed_history(self, past: dict[str, list[list[float]]]) -> None:
        """Put the historian's last hour before what the console has seen itself."""
        for key, rows in past.items():
            if key not in HISTORY_KEYS:
                continue
            h = self.history.setdefault(key, deque())
            first = h[0][0] if h else float("inf")
            older = [(float(t), float(v)) for t, v in rows if t < first]
            h.extendleft(reversed(older))
        self.seeded = True
        self.version += 1

    def set_answer(self, cap: str, result: Any = None, error: str | None = None) -> None:
        self.answers[cap] = Answer(time.time(), result, error)
        self.version += 1

    def set_clock(self, clock: SiteClock) -> None:
        """The site's clock and zone: every time on screen is shown on it."""
        self.clock = clock
        self.version += 1

    # -- reading --------------------------------------------------------------------------

    def alarm_count(self) -> int | None:
        """Active (not cleared) alarms, or None when no alarm source answered."""
        a = self.answers.get("alarms")
        if a is None or a.error is not None:
            return None
        return sum(1 for r in records(a.result) if is_active(r))


def records(result: Any) -> list[dict[str, Any]]:
    """A command's answer as a list of records, whatever its exact shape."""
    if isinstance(result, list):
        return [r if isinstance(r, dict) else {"value": r} for r in result]
    if isinstance(result, dict):
        for key in ("items", "alarms", "sessions", "entries", "records", "events", "audit",
                    "anomalies", "overrides", "strategies", "orders", "devices", "batteries"):
            if isinstance(result.get(key), list):
                return records(result[key])
        if result and all(isinstance(v, dict) for v in result.values()):
            return [{"id": k, **v} for k, v in result.items()]
        return [result] if result else []
    return []


def is_active(alarm: dict[str, Any]) -> bool:
    if "active" in alarm:
        return bool(alarm["active"])
    state = str(alarm.get("state", alarm.get("status", "active"))).lower()
    if state in ("cleared", "clear", "closed", "resolved"):
        return False
    return not alarm.get("cleared") and not alarm.get("cleared_s")
