"""Arguments of `autogrid forecast`; light to import (the parser is built on every call,
so `autogrid --help` must not pull in pandas, scikit-learn or pvlib)."""

from __future__ import annotations

from typing import Any


def add_parser(sub: Any) -> None:
    """The `autogrid forecast` subcommand (argparse subparsers of the main CLI)."""
    f = sub.add_parser("forecast", help="train load/PV forecasts, backtest, print metrics, plot")
    f.add_argument("-c", "--config", required=True, help="site config (YAML)")
    f.add_argument("--source", choices=["auto", "historian", "reference"], default="auto",
                   help="history to learn from (auto: historian if long enough, else the "
                        "reference year)")
    f.add_argument("--days", type=int, default=28,
                   help="test window in days (the last days; scored once, never used to choose)")
    f.add_argument("--val-days", type=int, default=28,
                   help="validation window in days (before the test window; chooses the model)")
    f.add_argument("--retrain-days", type=int, default=14, help="retrain every N days")
    f.add_argument("--trees", type=int, default=100, help="random forest size")
    f.add_argument("--plot", default="forecast.png", help="PNG of forecast vs actual")
    f.add_argument("--model-dir", help="save the chosen models here (versioned)")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
