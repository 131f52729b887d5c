"""`autogrid console` entry: options to settings, a clear message for every user error."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from gateway.console.theme import unicode_ok, want_color

SCREEN_NAMES = ("overview", "devices", "grid", "ev", "trading", "analytics", "alarms",
                "diagnostics", "emergency", "cluster")
# The words on the tabs (and their numbers) open the same screens as their names.
ALIASES = {"forecast": "analytics", "diag": "diagnostics", "emergencies": "emergency",
           **{str(i): name for i, name in enumerate(SCREEN_NAMES[:9], 1)}}


def screen_name(text: str) -> str:
    """The screen ``--screen`` means: its name, its tab label or its number."""
    key = text.strip().lower()
    name = ALIASES.get(key, key)
    if name not in SCREEN_NAMES:
        raise ValueError(f"unknown screen {text!r} (known: {', '.join(SCREEN_NAMES)}; "
                         f"the tab labels Forecast and Diag and the numbers 1-9 work too)")
    return name


def read_token(token_file: str | None) -> str | None:
    if token_file:
        try:
            text = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read the token file {token_file}: "
                             f"{exc.strerror or exc}") from None
        if not text:
            raise ValueError(f"the token file {token_file} is empty")
        return text
    return os.environ.get("AUTOGRID_TOKEN") or None


def console_main(args: argparse.Namespace, socket_path: Path) -> int:
    from gateway.console.app import run_console

    start = screen_name(args.screen) if args.screen else None
    token = read_token(args.token_file)
    return asyncio.run(run_console(socket_path, token=token, color=want_color(args.no_color),
                                   unicode=unicode_ok(), start=start))
