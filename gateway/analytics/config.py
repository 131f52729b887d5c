"""The optional ``analytics:`` config section (absent = defaults, on with the historian)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

PositiveS = Annotated[float, Field(gt=0)]


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
