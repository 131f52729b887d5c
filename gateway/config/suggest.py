"""Wording for "unknown name" errors: the closest matches, or the known names."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# Beyond this many known names, list only the close matches (a wall of names helps nobody).
_LIST_AT_MOST = 15


def unknown_name(kind: str, name: str, known: Iterable[str], where: str = "known") -> str:
    """``unknown template 'x'; did you mean 'y'? (known: a, b)``; never empty-handed."""
    names = sorted(set(known))
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    msg = f"unknown {kind} '{name}'"
    if close:
        msg += "; did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
    if not names:
        return msg + f" (none {where})"
    if len(names) <= _LIST_AT_MOST:
        return msg + f" ({where}: {', '.join(names)})"
    if close:
        return msg + f" ({len(names)} {where})"
    return msg + f" ({where}: {', '.join(names[:_LIST_AT_MOST])}, ... {len(names)} in all)"
