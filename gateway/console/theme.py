"""Engineering theme: green values, white text, red alarms and emergency, on black.

A monochrome palette (NO_COLOR, --no-color, or a terminal without colours) keeps the same
attribute names, with bold/standout/underline carrying the meaning instead of colour.
"""

from __future__ import annotations

import os

# name, foreground, background, mono, foreground high, background high
PaletteEntry = tuple[str, str, str, str]

COLOR: list[PaletteEntry] = [
    ("body", "white", "black", ""),
    ("text", "white", "black", ""),
    ("dim", "dark gray", "black", ""),
    ("title", "white,bold", "black", "bold"),
    ("header", "black", "dark green", "standout"),
    ("header_alarm", "white,bold", "dark red", "standout"),
    ("footer", "white", "black", ""),
    ("key", "black", "light gray", "standout"),
    ("value", "light green", "black", "bold"),
    ("good", "light green", "black", "bold"),
    ("warn", "yellow", "black", "underline"),
    ("bad", "light red", "black", "bold,underline"),
    ("alarm", "light red,bold", "black", "bold,underline"),
    ("emergency", "white,bold", "dark red", "standout"),
    ("emergency_frame", "light red", "black", "bold"),
    ("focus", "black", "light green", "standout"),
    ("focus_alarm", "white", "dark red", "standout"),
    ("tab", "white", "black", ""),
    ("tab_active", "black", "light green", "standout"),
    ("notice", "light green", "black", "bold"),
    ("error", "light red,bold", "black", "bold"),
    ("spark", "dark green", "black", ""),
]


def palette(color: bool) -> list[tuple[str, str, str, str]]:
    """The urwid palette: colours, or the same names with monochrome attributes only."""
    if color:
        return list(COLOR)
    return [(name, "default", "default", mono or "default") for name, _, _, mono in COLOR]


def want_color(no_color_flag: bool, environ: dict[str, str] | None = None) -> bool:
    """Colour unless --no-color, NO_COLOR is set (any value, per no-color.org) or TERM=dumb."""
    env = os.environ if environ is None else environ
    if no_color_flag or "NO_COLOR" in env:
        return False
    return env.get("TERM", "") != "dumb"


def unicode_ok(environ: dict[str, str] | None = None) -> bool:
    """Block characters for sparklines only when the locale is UTF-8."""
    env = os.environ if environ is None else environ
    for var in ("LC_ALL", "LC_CTYPE", "LANG"):
        val = env.get(var)
        if val:
            return "utf-8" in val.lower() or "utf8" in val.lower()
    return False
