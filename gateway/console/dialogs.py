"""Dialogs: two-step confirmation (red), a choice among options, a small form."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import urwid

from gateway.console.widgets import Size

Done = Callable[[Any], None]  # called with the answer, or None when cancelled


class Dialog(urwid.WidgetWrap[urwid.Widget]):
    """Base: Esc cancels; ``on_done(answer)`` closes the dialog in the app."""

    width = 60
    height = 10

    def __init__(self, body: urwid.Widget, title: str, on_done: Done, attr: str = "text"
                 ) -> None:
        self.on_done = on_done
        box = urwid.LineBox(body, title=title)
        super().__init__(urwid.AttrMap(box, attr))

    def selectable(self) -> bool:
        return True  # takes keys even when it shows only text (step 1 of a confirmation)

    def keypress(self, size: Size, key: str) -> str | None:
        if key == "esc":
            self.on_done(None)
            return None
        return super().keypress(size, key)


class TwoStep(Dialog):
    """Emergency confirmation. Step 1: read what will happen and press y. Step 2: type the
    action's word (e.g. STOP) and press Enter. Esc or anything else cancels."""

    height = 12

    def __init__(self, action: str, word: str, consequence: str, on_done: Done) -> None:
        self.word = word
        self.step = 1
        self.info = urwid.Text("")
        self.edit = urwid.Edit(("emergency_frame", "  type here: "))
        self.pile = urwid.Pile([self.info, urwid.Divider(), urwid.Text("")])
        self.action = action
        self.consequence = consequence
        super().__init__(urwid.Filler(self.pile, valign="top"), f" {action.upper()} ",
                         on_done, attr="emergency_frame")
        self._show()

    def _show(self) -> None:
        if self.step == 1:
            self.info.set_text([("emergency", f" {self.action.upper()} — step 1 of 2 "), "\n\n",
                                ("text", self.consequence), "\n\n",
                                ("text", "Press "), ("key", " y "),
                                ("text", " to continue, "), ("key", " Esc "),
                                ("text", " to cancel.")])
            self.pile.contents[2] = (urwid.Text(""), self.pile.options())
        else:
            self.info.set_text([("emergency", f" {self.action.upper()} — step 2 of 2: ARMED "),
                                "\n\n", ("text", "Type "), ("alarm", self.word),
                                ("text", " and press Enter to execute. Esc cancels."),
                                "\n", ("dim", "The action is audited with your name.")])
            self.pile.contents[2] = (self.edit, self.pile.options())
            self.pile.focus_position = 2

    def keypress(self, size: Size, key: str) -> str | None:
        if key == "esc":
            self.on_done(None)
            return None
        if self.step == 1:
            if key in ("y", "Y"):
                self.step = 2
                self._show()
            else:
                self.on_done(None)
            return None
        if key == "enter":
            self.on_done(self.edit.edit_text.strip() == self.word or None)
            return None
        return super().keypress(size, key)


class Choice(Dialog):
    """Pick one of a few options by its number key or Enter on it."""

    def __init__(self, title: str, question: str, options: list[tuple[str, str]],
                 on_done: Done) -> None:
        self.options = options
        self.height = len(options) + 6
        items: list[urwid.Widget] = [urwid.Text(question), urwid.Divider()]
        for i, (_, label) in enumerate(options, 1):
            btn = urwid.AttrMap(urwid.SelectableIcon(f" {i}  {label}", 0), "text", "focus")
            items.append(btn)
        self.listbox = urwid.ListBox(urwid.SimpleFocusListWalker(items))  # type: ignore[arg-type]
        self.listbox.focus_position = 2
        super().__init__(self.listbox, title, on_done)

    def keypress(self, size: Size, key: str) -> str | None:
        if key.isdigit() and 1 <= int(key) <= len(self.options):
            self.on_done(self.options[int(key) - 1][0])
            return None
        if key == "enter":
            pos = self.listbox.focus_position
            if isinstance(pos, int) and pos >= 2:
                self.on_done(self.options[pos - 2][0])
            return None
        return super().keypress(size, key)


class Form(Dialog):
    """A few text fields; Enter on the last one (or Tab through) submits a dict."""

    def __init__(self, title: str, fields: list[tuple[str, str, str]], on_done: Done,
                 help_text: str = "") -> None:
        self.edits: dict[str, urwid.Edit] = {}
        items: list[urwid.Widget] = []
        if help_text:
            items += [urwid.Text(("dim", help_text)), urwid.Divider()]
        for key, label, default in fields:
            e = urwid.Edit(f"{label:<22}", default)
            self.edits[key] = e
            items.append(urwid.AttrMap(e, "text", "focus"))
        items += [urwid.Divider(), urwid.Text(("dim", "Enter: next/submit  Esc: cancel"))]
        self.height = len(items) + 3
        self.pile = urwid.Pile(items)
        self.first = 2 if help_text else 0
        self.pile.focus_position = self.first
        super().__init__(urwid.Filler(self.pile, valign="top"), title, on_done)

    def keypress(self, size: Size, key: str) -> str | None:
        if key in ("enter", "tab"):
            pos = self.pile.focus_position
            last = self.first + len(self.edits) - 1
            if key == "enter" and pos >= last:
                self.on_done({k: e.edit_text.strip() for k, e in self.edits.items()})
                return None
            self.pile.focus_position = self.first + (pos - self.first + 1) % len(self.edits)
            return None
        return super().keypress(size, key)


class Detail(Dialog):
    """Read-only lines (a record in full, wrapped); Enter or Esc closes, ``a`` may act."""

    def __init__(self, title: str, lines: list[Any], on_done: Done,
                 keys: dict[str, Any] | None = None) -> None:
        self.keys = keys or {}
        items: list[urwid.Widget] = [urwid.Text(line) for line in lines]
        hint = "  ".join(f"{k}: {label}" for k, (label, _) in self.keys.items())
        items += [urwid.Divider(), urwid.Text(("dim", (hint + "  " if hint else "")
                                                + "Enter/Esc: close"))]
        self.height = max(8, len(items) + 6)
        super().__init__(urwid.Filler(urwid.Pile(items), valign="top"), title, on_done)

    def keypress(self, size: Size, key: str) -> str | None:
        if key in self.keys:
            self.on_done(self.keys[key][1])
            return None
        if key == "enter":
            self.on_done(None)
            return None
        return super().keypress(size, key)
