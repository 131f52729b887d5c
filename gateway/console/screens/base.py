"""What every screen is, and what a screen may ask of the app (Ctx)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import urwid

from gateway.console import caps
from gateway.console.data import ConsoleData, records
from gateway.console.dialogs import Dialog
from gateway.console.widgets import Markup, fmt_value


class Ctx(Protocol):
    """The app as seen by a screen."""

    data: ConsoleData
    unicode: bool

    def notify(self, text: str, level: str = "notice") -> None: ...

    def dialog(self, dlg: Dialog) -> None: ...

    def close_dialog(self) -> None: ...

    def act(self, cap: str, params: dict[str, Any], what: str,
            after: Callable[[], None] | None = None) -> None: ...

    def may(self, cap: str) -> bool: ...

    def go(self, name: str) -> None: ...

    def spawn(self, coro: Any, name: str) -> None: ...

    async def call(self, cmd: str, **params: Any) -> Any: ...

    def refresh(self, force: bool = False) -> None: ...


class Screen:
    """A page of the console. ``refresh`` redraws from ``ctx.data``; ``caps`` are the
    feature commands fetched while the screen is shown; ``handle`` takes its action keys."""

    name = ""
    title = ""
    actions: list[tuple[str, str]] = []
    caps: tuple[str, ...] = ()
    slow_caps: tuple[str, ...] = ()  # expensive answers: on entry and every 30 s

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.widget: urwid.Widget = self.build()

    def build(self) -> urwid.Widget:
        raise NotImplementedError

    def refresh(self) -> None:
        """Update the widgets from ctx.data (called at most a few times a second)."""

    def handle(self, key: str) -> bool:
        """An action key for this screen; True when used."""
        return False

    def enter(self) -> None:
        """The screen was just shown."""

    # -- helpers ------------------------------------------------------------------------

    def answer(self, cap: str) -> tuple[list[dict[str, Any]] | None, str | None]:
        """Records of a feature's last answer, or the reason there is none."""
        if caps.resolve(cap, self.ctx.data.commands) is None:
            return None, caps.missing(cap)
        a = self.ctx.data.answers.get(cap)
        if a is None:
            return None, "loading…"
        if a.error is not None:
            return None, a.error
        return records(a.result), None

    def raw(self, cap: str) -> Any:
        a = self.ctx.data.answers.get(cap)
        return None if a is None or a.error else a.result


def pick(rec: dict[str, Any], *keys: str, default: Any = None) -> Any:
    """The first of ``keys`` present in a record (answers from other components vary)."""
    for k in keys:
        if k in rec and rec[k] is not None:
            return rec[k]
    return default


def kv_lines(rec: dict[str, Any], skip: tuple[str, ...] = ()) -> list[Markup]:
    return [[("text", f"{k:<22}"), ("value", fmt_value(v))]
            for k, v in rec.items() if k not in skip and not isinstance(v, dict | list)]


def one_line(rec: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    """A record as ``key=value`` pairs on one line."""
    return "  ".join(f"{k}={fmt_value(v)}" for k, v in rec.items()
                     if k not in skip and not isinstance(v, dict | list))


def unavailable(text: str) -> urwid.Text:
    return urwid.Text(("dim", text))
