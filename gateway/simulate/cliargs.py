"""Arguments of `autogrid simulate`; light to import (the parser is built on every call)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `autogrid simulate` subcommand's arguments."""
    s = sub.add_parser("simulate", help="evaluate control: no control vs rules vs scheduler "
                                        "over simulated days (KPI table, PNG plots)")
    s.add_argument("-c", "--config", required=True, help="site config (YAML)")
    s.add_argument("--days", type=float, default=1.0, help="simulated days (default 1)")
    s.add_argument("--out", default="simulate-out",
                   help="folder for the PNG plots and kpis JSON (default ./simulate-out)")
    s.add_argument("--step", type=float, default=30.0,
                   help="control step in simulated seconds (default 30)")


def cmd_simulate(args: argparse.Namespace) -> int:
    from gateway.config.loader import load_config
    from gateway.simulate.command import run_simulate

    loaded = load_config(args.config)
    return run_simulate(loaded, args.days, Path(args.out), args.step, sys.stdout, sys.stderr)
