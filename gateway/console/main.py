"""`autogrid console` entry: options to settings, a clear message for every user error."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from gateway.console.theme import unicode_ok, want_color

SCREEN_NAMES = ("overview", "devices", "grid", "ev", "trading", "analytics", "alarms",
                "diagnostics", "emergency")


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

    if args.screen and args.screen not in SCREEN_NAMES:
        raise ValueError(f"unknown screen {args.screen!r} (known: {', '.join(SCREEN_NAMES)})")
    token = read_token(args.token_file)
    return asyncio.run(run_console(socket_path, token=token, color=want_color(args.no_color),
                                   unicode=unicode_ok(), start=args.screen))
