"""What every anomaly detector shares: the record it reports and the telemetry it reads."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

Telemetry = dict[str, pd.DataFrame]


@dataclass(frozen=True)
class Anomaly:
    device: str
    signal: str
    score: float
    explanation: str
    ts: str  # ISO time (UTC) of the worst sample
    detector: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def daily(s: pd.Series, tz: str) -> Any:
    """Group a UTC-indexed series by local calendar day."""
    return s.groupby(pd.DatetimeIndex(s.index).tz_convert(tz).date)
