"""Small widgets and text helpers: sparklines, direction bars, tables that update in place."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import urwid

from gateway.sitetime import SiteClock

Markup = Any  # urwid text markup: str, (attr, str) or a list of those
Size = tuple[()] | tuple[int] | tuple[int, int]
Wrap = Literal["space", "clip"]

BLOCKS = "▁▂▃▄▅▆▇█"
ASCII_BLOCKS = "_.-:=+*#"


def sparkline(samples: Sequence[tuple[float, float]], width: int, now: float,
              window_s: float, unicode: bool = True, lo: float | None = None,
              hi: float | None = None, gap_s: float | None = None) -> str:
    """``samples`` (ts, value) of the last ``window_s`` seconds as ``width`` characters;
    each character is the mean of its time bucket on the scale ``lo``..``hi`` (default: the
    samples' own range). A bucket without a sample holds the previous value for ``gap_s``
    at most (default: always); past that, and before the first sample, it is blank, so a
    gap in the data shows as a gap."""
    if width <= 0:
        return ""
    step = window_s / width
    sums = [0.0] * width
    counts = [0] * width
    last_ts = [float("-inf")] * width
    for ts, v in samples:
        i = int((ts - (now - window_s)) / step)
        if 0 <= i < width:
            sums[i] += v
            counts[i] += 1
            last_ts[i] = max(last_ts[i], ts)
    vals = [s / c for s, c in zip(sums, counts, strict=True) if c]
    if not vals:
        return " " * width
    lo = min(vals) if lo is None else lo
    hi = max(vals) if hi is None else hi
    chars = BLOCKS if unicode else ASCII_BLOCKS
    out = []
    prev, seen = " ", float("-inf")
    for i, (s, c) in enumerate(zip(sums, counts, strict=True)):
        if c:
            frac = 0.5 if hi == lo else (s / c - lo) / (hi - lo)
            prev = chars[max(0, min(len(chars) - 1, int(frac * len(chars))))]
            seen = last_ts[i]
        elif gap_s is not None and now - window_s + (i + 1) * step - seen > gap_s:
            prev = " "
        out.append(prev)
    return "".join(out)


def spark_range(samples: Sequence[tuple[float, float]], min_span: float,
                floor: float | None = 0.0) -> tuple[float, float]:
    """A sparkline's scale: the samples' range widened to include ``floor`` (zero for
    power) and to at least ``min_span``, so 0.1 kW does not fill a bar."""
    vals = [v for _, v in samples] or [0.0]
    lo, hi = min(vals), max(vals)
    if floor is not None:
        lo, hi = min(lo, floor), max(hi, floor)
    if hi - lo < min_span:
        mid = (hi + lo) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
        if floor is not None and lo < floor <= min(vals):
            lo, hi = floor, floor + min_span
        elif floor is not None and hi > floor >= max(vals):
            lo, hi = floor - min_span, floor
    return lo, hi


def flow_bar(value: float | None, scale: float, width: int, unicode: bool = True) -> str:
    """A centred bar: to the right for + (import, production, discharge), left for -."""
    half = max(1, (width - 1) // 2)
    if value is None:
        return " " * half + "?" + " " * half
    n = min(half, round(abs(value) / scale * half)) if scale > 0 else 0
    fill = "█" if unicode else "="
    if value < 0:
        left, right = " " * (half - n) + fill * n, " " * half
    else:
        left, right = " " * half, fill * n + " " * (half - n)
    return left[:half] + "|" + right[:half]


def fmt_value(v: Any, digits: int = 1) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return "--" if v is None else str(v)


def fmt_kw(v: Any) -> str:
    return f"{v:8.1f} kW" if isinstance(v, int | float) and not isinstance(v, bool) \
        else "      -- kW"


def fmt_age(ts: Any, now: float | None = None) -> str:
    if not isinstance(ts, int | float):
        return "never"
    age = (time.time() if now is None else now) - ts
    if age < 0:
        age = 0
    if age < 60:
        return f"{age:.1f} s ago"
    if age < 3600:
        return f"{age / 60:.0f} min ago"
    return time.strftime("%H:%M:%S", time.localtime(ts))


# The site's zone and clock for every time on screen; the app sets it from the daemon's
# ``site_time`` answer (until then: this machine's zone and the wall clock).
CLOCK = SiteClock()


def set_clock(clock: SiteClock) -> None:
    global CLOCK
    CLOCK = clock


def fmt_time(ts: Any, site_clock: bool = False) -> str:
    """HH:MM:SS in the site's zone of a Unix time or an ISO 8601 string. A wall-clock time
    (alarms, audit) is placed on the site clock in a simulation; ``site_clock`` says the
    time is already on it (EV departures, override expiry: control runs on the site clock)."""
    if isinstance(ts, str):
        parsed = parse_ts(ts)
        ts = parsed if parsed is not None else ts
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        at = float(ts) if site_clock else CLOCK.from_wall(float(ts))
        return dt.datetime.fromtimestamp(at, tz=CLOCK.tz).strftime("%H:%M:%S")
    return "--" if ts is None else str(ts)[:19]


def parse_ts(text: str) -> float | None:
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def quality_attr(q: Any) -> str:
    return {"good": "good", "stale": "warn", "offline": "bad"}.get(str(q), "dim")


def severity_attr(sev: Any) -> str:
    s = str(sev).lower()
    if s in ("critical", "emergency", "alarm", "high", "error", "trip"):
        return "alarm"
    if s in ("warning", "warn", "medium"):
        return "warn"
    return "text"


def cell(v: Any, width: int, right: bool = False) -> str:
    s = fmt_value(v)
    if len(s) > width:
        s = s[: max(0, width - 1)] + "…"
    return s.rjust(width) if right else s.ljust(width)


class Row(urwid.Text):
    """A selectable line of a table; carries the key of the record it shows."""

    _selectable = True

    def __init__(self, key: str, markup: Markup, wrap: Wrap = "clip") -> None:
        super().__init__(markup, wrap=wrap)
        self.key = key
        self.markup = markup

    def keypress(self, size: Size, key: str) -> str | None:
        return key


class Table(urwid.WidgetWrap[urwid.ListBox]):
    """A scrolling list of one-line rows that updates the text of existing rows in place
    (no rebuild, so focus and scroll position survive a refresh)."""

    def __init__(self, header: Markup = "", empty: str = "nothing to show",
                 wrap: Wrap = "clip") -> None:
        """``wrap="space"``: a row too long for the screen continues on the next lines
        (alarm messages) instead of being cut."""
        self.wrap = wrap
        self.walker: urwid.SimpleFocusListWalker[Any] = urwid.SimpleFocusListWalker([])
        self.listbox = urwid.ListBox(self.walker)
        self.empty = empty
        self._header = urwid.Text(("title", header) if isinstance(header, str) else header,
                                  wrap="clip")
        self._rows: list[Row] = []
        super().__init__(self.listbox)
        self.set_rows([])

    def header_widget(self) -> urwid.Text:
        return self._header

    def set_header(self, markup: Markup) -> None:
        self._header.set_text(markup)

    def set_rows(self, rows: Iterable[tuple[str, Markup]], empty: str | None = None) -> None:
        """Show ``rows``; with none, ``empty`` (the reason) or the table's default text."""
        rows = list(rows)
        if not rows:
            rows = [("", ("dim", empty or self.empty))]
        focus_key = self.focus_key()
        for i, (key, markup) in enumerate(rows):
            if i < len(self._rows):
                r = self._rows[i]
                r.key = key
                if r.markup != markup:  # unchanged rows are not redrawn
                    r.markup = markup
                    r.set_text(markup)
            else:
                r = Row(key, markup, self.wrap)
                self._rows.append(r)
                self.walker.append(urwid.AttrMap(r, None, focus_map=_FOCUS))
        if len(self._rows) > len(rows):
            del self._rows[len(rows):]
            del self.walker[len(rows):]
        if focus_key is not None:
            for i, r in enumerate(self._rows):
                if r.key == focus_key:
                    self.walker.set_focus(i)
                    break

    def focus_key(self) -> str | None:
        if not self._rows:
            return None
        _, pos = self.walker.get_focus()
        if pos is None or pos >= len(self._rows):
            return None
        return self._rows[pos].key or None

    def keys(self) -> list[str]:
        return [r.key for r in self._rows if r.key]


_FOCUS = {None: "focus", "text": "focus", "value": "focus", "good": "focus", "warn": "focus",
          "bad": "focus_alarm", "alarm": "focus_alarm", "dim": "focus"}


class FitText(urwid.Widget):
    """One line that shows the first of several markups that fits its width (the last one,
    clipped, when none does): a key bar or a header that shortens instead of being cut."""

    _sizing = frozenset([urwid.Sizing.FLOW])

    def __init__(self, attr: str | None = None) -> None:
        super().__init__()
        self.choices: list[Markup] = [""]
        self.attr = attr

    def set_choices(self, choices: list[Markup]) -> None:
        if choices != self.choices:
            self.choices = choices
            self._invalidate()

    def rows(self, size: tuple[int], focus: bool = False) -> int:
        return 1

    def render(self, size: Size, focus: bool = False) -> urwid.Canvas:
        cols = size[0] if size else 80
        pick = self.choices[-1]
        for markup in self.choices:
            if len(urwid.Text(markup).text) <= cols:
                pick = markup
                break
        text = urwid.Text(pick, wrap="clip")
        widget = urwid.AttrMap(text, self.attr) if self.attr else text
        return widget.render((cols,))


def boxed(title: str, body: urwid.Widget, attr: str = "text") -> urwid.Widget:
    return urwid.AttrMap(urwid.LineBox(body, title=title, title_align="left"), attr)


def note(text: Markup) -> urwid.Text:
    return urwid.Text(text)
