"""The optional ``analytics:`` config section (absent = defaults, on with the historian)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PositiveS = Annotated[float, Field(gt=0)]


class WeatherFeedSettings(BaseModel):
    """A day-ahead weather forecast in Open-Meteo's JSON format, from a URL or a file.

    Refreshed every ``refresh_s`` off the event loop; older than ``max_age_s`` it is stale
    and the PV forecast uses its model without weather (and says so).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = None  # http(s)://..., e.g. Open-Meteo's /v1/forecast with timezone=GMT
    file: str | None = None  # a JSON document in the same format, rewritten by something else
    refresh_s: PositiveS = 3600.0
    max_age_s: PositiveS = 6 * 3600.0
    timeout_s: PositiveS = 10.0  # one fetch

    @field_validator("url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https:// (found {v!r}); a local "
                             f"document goes in 'file'")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> WeatherFeedSettings:
        if (self.url is None) == (self.file is None):
            raise ValueError("give exactly one of 'url' or 'file' (found "
                             + ("both" if self.url else "neither") + ")")
        if self.max_age_s < self.refresh_s:
            raise ValueError(f"max_age_s ({self.max_age_s:g}) is shorter than refresh_s "
                             f"({self.refresh_s:g}): the forecast would go stale between "
                             f"refreshes")
        return self

    @property
    def source(self) -> str:
        return self.url or self.file or ""


class AnalyticsSettings(BaseModel):
    """Forecast retraining and the anomaly detectors' schedule (all times in seconds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True  # the analytics component (it needs the historian)
    retrain_interval_s: PositiveS = 86400.0  # forecast models
    detect: bool = True  # run the anomaly detectors on a schedule
    detect_interval_s: PositiveS = 900.0
    # The first `baseline_s` of telemetry (or the span an operator re-baselines) is what
    # normal looks like; each run then checks at most the last `window_s`.
    baseline_s: PositiveS = 86400.0
    window_s: PositiveS = 86400.0
    step_s: PositiveS = 60.0  # telemetry grid the detectors see (held between changes)
    forest_trees: Annotated[int, Field(ge=10, le=1000)] = 100
    weather_feed: WeatherFeedSettings | None = None  # absent: PV forecasts without weather
