"""Limits that keep the local API usable for the operator who needs it in an emergency.

``api:`` in the site config (all optional)::

    api:
      max_connections: 64           # all API connections together (the daemon has
                                    # LimitNOFILE=8192; devices and databases need fds too)
      max_connections_per_uid: 16   # one Unix user cannot take them all
      reserved_for_operators: 8     # the last slots: only operator/engineer peers get them
      idle_timeout_s: 900           # a connection that sends nothing is closed (subscribers
                                    # are not idle: they receive updates)
      token_failures: 5             # bad tokens from one uid within token_window_s ...
      token_window_s: 60
      token_lockout_s: 300          # ... and its token attempts are refused for this long
      audit_retention_days: 90      # audit rows (commands, refusals) older than this go ...
      audit_max_rows: 100000        # ... and so do the oldest beyond this count

Plain Python (no I/O) so the config schema can import it and the tests can drive time.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ApiSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_connections: Annotated[int, Field(ge=2, le=4096)] = 64
    max_connections_per_uid: Annotated[int, Field(ge=1, le=4096)] = 16
    reserved_for_operators: Annotated[int, Field(ge=0, le=4096)] = 8
    idle_timeout_s: Annotated[float, Field(gt=0, le=86400)] = 900.0
    token_failures: Annotated[int, Field(ge=1, le=1000)] = 5
    token_window_s: Annotated[float, Field(gt=0, le=86400)] = 60.0
    token_lockout_s: Annotated[float, Field(gt=0, le=86400)] = 300.0
    audit_retention_days: Annotated[float, Field(gt=0, le=36500)] = 90.0
    audit_max_rows: Annotated[int, Field(ge=100, le=10_000_000)] = 100_000

    @model_validator(mode="after")
    def _reserve_fits(self) -> ApiSettings:
        if self.reserved_for_operators >= self.max_connections:
            raise ValueError(f"reserved_for_operators ({self.reserved_for_operators}) must be "
                             f"less than max_connections ({self.max_connections})")
        return self


class ConnectionLimiter:
    """Counts open API connections by peer uid; says why a new one is refused."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        self.by_uid: Counter[int] = Counter()
        self.refused = 0

    @property
    def total(self) -> int:
        return sum(self.by_uid.values())

    def admit(self, uid: int, privileged: bool) -> str | None:
        """Count the connection and return None, or return the reason it is refused.
        ``privileged``: the peer's role is operator or engineer (may use the reserve)."""
        s, total, mine = self.settings, self.total, self.by_uid[uid]
        why: str | None = None
        if total >= s.max_connections:
            why = (f"too many connections ({total} open, limit {s.max_connections}); "
                   f"try again later")
        elif mine >= s.max_connections_per_uid:
            why = (f"too many connections from uid {uid} ({mine} open, limit "
                   f"{s.max_connections_per_uid}); close some and try again")
        elif not privileged and total >= s.max_connections - s.reserved_for_operators:
            why = (f"too many connections ({total} open; the last "
                   f"{s.reserved_for_operators} are kept for operators); try again later")
        if why is not None:
            self.refused += 1
            return why
        self.by_uid[uid] += 1
        return None

    def release(self, uid: int) -> None:
        self.by_uid[uid] -= 1
        if self.by_uid[uid] <= 0:
            del self.by_uid[uid]


class TokenLimiter:
    """Bad tokens per uid in a sliding window; too many locks the uid's token attempts out
    for a while (a token is a password: guessing must be slow)."""

    def __init__(self, settings: ApiSettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.clock = clock
        self._failures: dict[int, deque[float]] = {}
        self._locked_until: dict[int, float] = {}
        self.refused_in_lockout: Counter[int] = Counter()

    def locked_for(self, uid: int) -> float | None:
        """Seconds of lockout left for ``uid``, or None when it may try a token."""
        until = self._locked_until.get(uid)
        if until is None:
            return None
        left = until - self.clock()
        if left <= 0:
            del self._locked_until[uid]
            self.refused_in_lockout.pop(uid, None)
            return None
        self.refused_in_lockout[uid] += 1
        return left

    def failed(self, uid: int) -> bool:
        """Record a bad token; True when this one starts a lockout."""
        now = self.clock()
        s = self.settings
        window = self._failures.setdefault(uid, deque())
        window.append(now)
        while window and window[0] <= now - s.token_window_s:
            window.popleft()
        if len(self._failures) > 1024:  # bound memory: forget quiet uids
            for other in [u for u, w in self._failures.items() if u != uid and
                          (not w or w[-1] <= now - s.token_window_s)]:
                del self._failures[other]
        if len(window) >= s.token_failures:
            self._failures.pop(uid, None)
            self._locked_until[uid] = now + s.token_lockout_s
            return True
        return False
