"""Day-ahead weather forecasts in Open-Meteo's JSON format, from a URL or a file.

Open-Meteo (and the simulator's endpoint) give ``hourly.time`` in UTC (``timezone=GMT``)
with ``shortwave_radiation`` as the mean of the hour *before* each time and
``temperature_2m`` at the time itself. ``WeatherFeed`` refreshes on a schedule (in a
worker thread) and keeps the last good forecast; past ``max_age_s`` it is stale, the
forecaster gets nothing and ``status`` says why, so PV falls back to its model without
weather instead of using an old forecast.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger("autogrid.analytics.weather")
QUARTER = pd.Timedelta(minutes=15)
KEEP_PAST = pd.Timedelta(hours=24)  # earlier issues' hours kept before the latest one


class FeedError(ValueError):
    """A forecast that cannot be used; the message says what is wrong with it."""


def parse_open_meteo(doc: Any, source: str = "forecast") -> pd.DataFrame:
    """Open-Meteo JSON -> 15-minute frame (UTC quarter starts): ghi_fc_w_m2, temp_fc_c."""
    if not isinstance(doc, dict) or not isinstance(doc.get("hourly"), dict):
        raise FeedError(f"{source}: no 'hourly' object (not Open-Meteo forecast JSON)")
    if doc.get("utc_offset_seconds", 0) != 0:
        raise FeedError(f"{source}: times must be UTC (ask for timezone=GMT), found offset "
                        f"{doc.get('utc_offset_seconds')} s")
    h = doc["hourly"]
    missing = [k for k in ("time", "shortwave_radiation", "temperature_2m") if k not in h]
    if missing:
        raise FeedError(f"{source}: hourly lacks {', '.join(missing)}")
    n = len(h["time"])
    if n == 0 or any(len(h[k]) != n for k in ("shortwave_radiation", "temperature_2m")):
        raise FeedError(f"{source}: hourly arrays are empty or of different lengths")
    try:
        t = pd.DatetimeIndex(pd.to_datetime(h["time"], utc=True))
        ghi = np.array([np.nan if v is None else float(v) for v in h["shortwave_radiation"]])
        temp = np.array([np.nan if v is None else float(v) for v in h["temperature_2m"]])
    except (TypeError, ValueError) as e:
        raise FeedError(f"{source}: unreadable hourly values ({e})") from None
    if (ghi < 0).any() or (ghi > 1500).any():
        raise FeedError(f"{source}: shortwave_radiation outside 0..1500 W/m2")
    quarters = pd.date_range(t[0] - pd.Timedelta(hours=1), t[-1], freq=QUARTER,
                             inclusive="left")
    # radiation: the hour ending at each time covers its four quarters; temperature: linear
    ghi_q = pd.Series(ghi, index=t - pd.Timedelta(hours=1)).reindex(quarters, method="ffill",
                                                                    limit=3)
    temp_q = pd.Series(temp, index=t).reindex(quarters.union(t)).interpolate(
        method="time", limit_area="inside").reindex(quarters)
    return pd.DataFrame({"ghi_fc_w_m2": ghi_q.to_numpy(), "temp_fc_c": temp_q.to_numpy()},
                        index=quarters)


def fetch(source: str, timeout_s: float = 10.0) -> pd.DataFrame:
    """Read and parse a forecast from an http(s) URL or a file path."""
    try:
        if source.startswith(("http://", "https://")):
            with urllib.request.urlopen(source, timeout=timeout_s) as resp:
                doc = json.loads(resp.read())
        else:
            doc = json.loads(Path(source).read_text())
    except (OSError, ValueError) as e:  # URLError, timeouts, bad JSON or encoding
        raise FeedError(f"{source}: cannot read the forecast ({e})") from None
    return parse_open_meteo(doc, source)


class WeatherFeed:
    """The latest good forecast from ``source``, refreshed every ``refresh_s``."""

    def __init__(self, source: str, refresh_s: float = 3600.0, max_age_s: float = 6 * 3600.0,
                 clock: Callable[[], float] = time.time, timeout_s: float = 10.0) -> None:
        self.source = source
        self.refresh_s = refresh_s
        self.max_age_s = max_age_s
        self.timeout_s = timeout_s
        self.clock = clock
        self.frame: pd.DataFrame | None = None
        self.fetched_at: float | None = None
        self.last_error: str | None = None

    def refresh(self) -> bool:
        """Fetch once (blocking: call it from a worker thread); keep the old one on failure."""
        try:
            frame = fetch(self.source, self.timeout_s)
        except FeedError as e:
            if self.last_error != str(e):
                log.error("weather forecast: %s", e)
            self.last_error = str(e)
            return False
        if self.last_error is not None:
            log.info("weather forecast: recovered (%s)", self.source)
        if self.frame is not None:  # keep the hours before this issue (intraday PV compares
            # the forecast with what was measured since the morning); newer values win
            keep = self.frame[self.frame.index >= frame.index[0] - KEEP_PAST]
            frame = frame.combine_first(keep)
        self.frame, self.fetched_at, self.last_error = frame, self.clock(), None
        return True

    def current(self) -> pd.DataFrame | None:
        """The forecast if it is fresh enough to use, else None (``status`` says why)."""
        if self.frame is None or self.fetched_at is None:
            return None
        return self.frame if self.clock() - self.fetched_at <= self.max_age_s else None

    @property
    def state(self) -> str:
        """``fresh`` (in use), ``stale`` (too old, not used) or ``none`` (never fetched)."""
        if self.fetched_at is None:
            return "none"
        return "fresh" if self.clock() - self.fetched_at <= self.max_age_s else "stale"

    @property
    def status(self) -> str:
        """One line for operators: where the forecast comes from and whether it is used."""
        err = f"; last error: {self.last_error}" if self.last_error else ""
        if self.fetched_at is None:
            return (f"no weather forecast yet from {self.source}, using the model without "
                    f"weather" + (f" ({self.last_error})" if self.last_error else ""))
        age = self.clock() - self.fetched_at
        if age > self.max_age_s:
            since = datetime.fromtimestamp(self.fetched_at + self.max_age_s, UTC)
            return (f"weather forecast: stale since {since:%Y-%m-%d %H:%M} UTC (last good "
                    f"fetch {age / 3600:.1f} h ago, max {self.max_age_s / 3600:.1f} h), using "
                    f"the model without weather{err}")
        return f"weather forecast from {self.source}, {age / 60:.0f} min old{err}"

    def describe(self) -> dict[str, object]:
        """For the API: state, the status line, source, age and the last error."""
        age = None if self.fetched_at is None else round(self.clock() - self.fetched_at, 1)
        return {"state": self.state, "status": self.status, "source": self.source,
                "age_s": age, "max_age_s": self.max_age_s, "error": self.last_error}

    async def run(self) -> None:
        """Refresh forever (cancel to stop); fetching runs in a worker thread of its own, so
        a slow server never waits behind (or holds up) training and detection."""
        while True:
            await asyncio.to_thread(self.refresh)
            await asyncio.sleep(self.refresh_s)
