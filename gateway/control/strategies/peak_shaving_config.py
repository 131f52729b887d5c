"""``control.strategies.peak_shaving``: the import the battery, EVs and V2G hold down to."""

from __future__ import annotations

from gateway.control.strategies.section import Kw, StrategySection

DEFAULT_SHARE = 0.9  # of the import limit, without a threshold of its own


class PeakShavingConfig(StrategySection):
    threshold_kw: Kw | None = None  # default: 90 % of the import limit

    def threshold_for(self, import_limit_kw: float | None) -> float | None:
        """The threshold in force: its own, else 90 % of the import limit, else none."""
        if self.threshold_kw is not None:
            return self.threshold_kw
        return DEFAULT_SHARE * import_limit_kw if import_limit_kw is not None else None
