"""The console application: header, screen, footer; keys; dialogs; the update loop.

Data arrives from the bridge (subscription + periodic requests) into ConsoleData; a tick of
urwid's loop (4 per second) refreshes the visible screen only if the data moved, so 500
changing points cost one redraw per tick, and urwid rewrites only the changed rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urwid

from gateway.aio import cancel_and_wait
from gateway.apiclient import ApiRequestError, ApiUnavailable
from gateway.console import caps, widgets
from gateway.console.bridge import Bridge
from gateway.console.data import ConsoleData
from gateway.console.dialogs import Dialog
from gateway.console.screens import EXTRA_SCREENS, SCREENS, Screen
from gateway.console.theme import palette
from gateway.console.widgets import FitText
from gateway.summary import safe_text

log = logging.getLogger("autogrid.console")

TICK_S = 0.25
FAST_S = 0.5  # summary (power flow)
SLOW_S = 2.0  # stats, device list, the visible screen's feature commands
RARE_S = 30.0  # expensive answers (battery health from the historian)
NAV_LABELS = ["Overview", "Devices", "Grid", "EV", "Trading", "Forecast", "Alarms", "Diag",
              "EMERGENCY"]
SHORT_LABELS = ["Over", "Dev", "Grid", "EV", "Trade", "Fcst", "Alarm", "Diag", "EMERG"]


class ConsoleApp:
    def __init__(self, data: ConsoleData, bridge: Bridge | None = None, color: bool = True,
                 unicode: bool = True) -> None:
        self.data = data
        self.bridge = bridge
        self.color = color
        self.unicode = unicode
        self.screens: list[Screen] = [cls(self) for cls in SCREENS]
        self.extra = {key: cls(self) for key, cls in EXTRA_SCREENS.items()}  # by letter
        self.by_name = {s.name: s for s in [*self.screens, *self.extra.values()]}
        self.current = self.screens[0]
        self.header_text = FitText()
        self.clock = urwid.Text("", align="right", wrap="clip")
        self.header = urwid.AttrMap(urwid.Columns([self.header_text, (1, urwid.Text(""))]),
                                    "header")
        self.nav = FitText()
        self.hints = urwid.Text("", wrap="clip")
        self.message: tuple[str, str, float] | None = None
        self.status = urwid.Text("", wrap="clip")
        self.body = urwid.WidgetPlaceholder(self.current.widget)
        self.frame = urwid.Frame(urwid.AttrMap(self.body, "body"), header=self.header,
                                 footer=urwid.Pile([urwid.Divider("─"), self.status, self.hints,
                                                    self.nav]))
        self.top: urwid.WidgetPlaceholder[Any] = urwid.WidgetPlaceholder(self.frame)
        self.loop: urwid.MainLoop | None = None
        self._quit = asyncio.Event() if _has_loop() else None
        self._tasks: list[asyncio.Task[Any]] = []
        self._seen_version = -1
        self._last_refresh = 0.0
        self.refresh(force=True)

    # -- Ctx for the screens -------------------------------------------------------------

    def notify(self, text: str, level: str = "notice") -> None:
        self.message = (safe_text(text), "error" if level == "error" else "notice",
                        time.time())
        self._draw_status()

    def dialog(self, dlg: Dialog) -> None:
        self.top.original_widget = urwid.Overlay(
            dlg, self.frame, align="center", width=("relative", 80), valign="middle",
            height=dlg.height, min_width=40)

    def close_dialog(self) -> None:
        self.top.original_widget = self.frame

    def may(self, cap: str) -> bool:
        cmd = caps.resolve(cap, self.data.commands)
        if cmd is None:
            self.notify(caps.missing(cap), "error")
            return False
        ok, why = self.data.allowed(cmd)
        if not ok:
            self.notify(f"Refused: {why}", "error")
        return ok

    def act(self, cap: str, params: dict[str, Any], what: str,
            after: Callable[[], None] | None = None) -> None:
        """Run a command that changes something; say what happened, or why not."""
        if not self.may(cap):
            return
        cmd = caps.resolve(cap, self.data.commands)
        assert cmd is not None
        self.notify(f"{what}: sending…")
        self._spawn(self._act(cmd, params, what, after), f"console {cmd}")

    async def _act(self, cmd: str, params: dict[str, Any], what: str,
                   after: Callable[[], None] | None) -> None:
        if self.bridge is None:
            return
        try:
            result = await self.bridge.call(cmd, **params)
        except ApiRequestError as exc:
            self.notify(f"Refused by the gateway: {exc}", "error")
            return
        except ApiUnavailable as exc:
            self.notify(f"{what} not sent: {exc}", "error")
            return
        self.notify(done_text(what, result))
        await self._load_caps(self.current)
        if after:
            after()
        self.refresh(force=True)

    def go(self, name: str) -> None:
        self.current = self.by_name[name]
        self.body.original_widget = self.current.widget
        self.current.enter()
        self.message = None
        if self.bridge is not None and _has_loop():
            self._spawn(self._load_caps(self.current, slow=True), "console load")
        self.refresh(force=True)

    # -- drawing -------------------------------------------------------------------------

    def refresh(self, force: bool = False) -> None:
        """Redraw the visible screen if the data moved (or a second passed, for ages)."""
        now = time.monotonic()
        if not force and self.data.version == self._seen_version and \
                now - self._last_refresh < 1.0:
            return
        self._seen_version = self.data.version
        self._last_refresh = now
        widgets.set_clock(self.data.clock)
        self.current.refresh()
        self._draw_header()
        self._draw_footer()
        self._draw_status()

    def _draw_header(self) -> None:
        d = self.data
        n = d.alarm_count()
        bad = bool(n) or not d.connected
        link = "live" if d.connected else "DISCONNECTED"
        sep = " │ " if self.unicode else " | "
        title = (f" AutoGrid ▸ {self.current.title}" if self.unicode else
                 f" AutoGrid > {self.current.title}")
        # Most important first, so a narrow terminal loses the least useful part.
        state = [link] + ([f"alarms {n}"] if n is not None else [])
        who = f"{d.user} ({d.role})"
        self.header_text.set_choices([
            sep.join([title, *state, f"gateway {d.ping.get('gateway', '?')}", who]),
            sep.join([title, *state, who]), sep.join([title, *state, d.role]),
            sep.join([title, *state])])
        self.clock.set_text(self.clock_text() + " ")
        cols = self.header.original_widget
        width = len(self.clock.text)
        if cols.contents[1][0] is not self.clock or cols.contents[1][1][1] != width:
            cols.contents[1] = (self.clock, cols.options("given", width))
        self.header.set_attr_map({None: "header_alarm" if bad else "header"})

    def clock_text(self) -> str:
        """The site clock in the site's zone; marked when it is a simulation's clock."""
        c = self.data.clock
        text = c.label(c.now())
        return text + (f" sim {c.speed:g}x" if c.simulated else "")

    def _draw_footer(self) -> None:
        self.nav.set_choices([self._nav(NAV_LABELS, " Quit", " Help"),
                              self._nav(SHORT_LABELS, " Quit", " Help"),
                              self._nav(SHORT_LABELS, "", ""),
                              self._nav(None, "", "")])
        hints: list[Any] = []
        for key, label in self.current.actions:
            hints += [("key", f" {key} "), ("text", f" {label}  ")]
        extra = "".join(f", {k} {s.title}" for k, s in self.extra.items())
        self.hints.set_text(hints or [("dim", f"F1-F9 or 1-9 switch screens{extra}")])

    def _nav(self, labels: list[str] | None, quit_: str, help_: str) -> list[Any]:
        """The key bar with ``labels`` for the other screens (None: numbers only); the
        current screen always shows its full label."""
        nav: list[Any] = []
        for i, s in enumerate(self.screens, 1):
            active = s is self.current
            label = NAV_LABELS[i - 1] if active else (labels[i - 1] if labels else "")
            nav += [("key" if not active else "tab_active", f"{i}"),
                    ("emergency" if s.name == "emergency" else
                     ("tab_active" if active else "tab"), f" {label}" if label else ""), " "]
        return [*nav, ("key", "q"), ("tab", quit_), " ", ("key", "?"), ("tab", help_)]

    def _draw_status(self) -> None:
        if not self.data.connected:
            self.status.set_text(("error", f"Not connected: {self.data.problem or '...'}; "
                                           f"retrying"))
            return
        if self.message and time.time() - self.message[2] < 15:
            self.status.set_text((self.message[1], self.message[0]))
        else:
            age = time.time() - self.data.last_update if self.data.last_update else None
            self.status.set_text(("dim", f"live: {self.data.updates} updates"
                                         + (f", last {age:.1f} s ago" if age is not None
                                            else "")))

    # -- keys ----------------------------------------------------------------------------

    def handle_key(self, key: str | tuple[str, int, int, int]) -> bool:
        """Keys no widget used: the screen's actions first, then navigation."""
        if not isinstance(key, str):
            return False
        if self.top.original_widget is not self.frame:
            return False
        if self.current.handle(key):
            self.refresh(force=True)
            return True
        if key in ("q", "Q", "f10"):
            if self._quit is not None:
                self._quit.set()
            return True
        nav = {**{str(i): s.name for i, s in enumerate(self.screens, 1)},
               **{f"f{i}": s.name for i, s in enumerate(self.screens, 1)},
               **{k: s.name for k, s in self.extra.items()}}
        if key in nav:
            self.go(nav[key])
            return True
        if key == "?":
            self._help()
            return True
        return False

    def _help(self) -> None:
        from gateway.console.dialogs import Choice

        lines = [(s.name, f"{i} / F{i}  {s.title}") for i, s in enumerate(self.screens, 1)]
        lines += [(s.name, f"{k}       {s.title}") for k, s in self.extra.items()]
        self.dialog(Choice(" Keys ", "Screens (Enter opens). Arrows move, Tab switches "
                           "lists, Esc closes. q quits.", lines, self._help_done))

    def _help_done(self, answer: Any) -> None:
        self.close_dialog()
        if answer:
            self.go(answer)

    # -- running -------------------------------------------------------------------------

    async def call(self, cmd: str, **params: Any) -> Any:
        """One API request for a screen's own flow (ApiUnavailable when not connected)."""
        if self.bridge is None:
            raise ApiUnavailable("not connected to the daemon")
        return await self.bridge.call(cmd, **params)

    def spawn(self, coro: Any, name: str) -> None:
        """Run a screen's own follow-up work (e.g. waiting for a training's outcome)."""
        self._spawn(coro, name)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.append(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            self.notify(f"internal error: {task.exception()!r}", "error")

    async def _load_caps(self, screen: Screen, slow: bool = False) -> None:
        if self.bridge is None or not self.data.connected:
            return
        wanted = list(dict.fromkeys((*screen.caps, *(screen.slow_caps if slow else ()),
                                     "alarms")))
        for cap in wanted:
            await self.bridge.fetch(cap)

    async def _poll(self) -> None:
        """Periodic requests: summary twice a second, the rest every two seconds."""
        assert self.bridge is not None
        last_slow = last_rare = 0.0
        while True:
            try:
                if not self.data.connected:
                    await self.bridge.connect()
                    self._spawn(self._follow(), "console subscription")
                    self.notify("reconnected")
                await self.bridge.refresh_fast()
                if time.monotonic() - last_slow >= SLOW_S:
                    last_slow = time.monotonic()
                    await self.bridge.refresh_slow()
                    rare = time.monotonic() - last_rare >= RARE_S
                    if rare:
                        last_rare = time.monotonic()
                    await self._load_caps(self.current, slow=rare)
            except (ApiUnavailable, ApiRequestError, OSError, TimeoutError) as exc:
                self.data.connected = False
                self.data.problem = str(exc)
                self.data.version += 1
                await asyncio.sleep(2.0)
                continue
            await asyncio.sleep(FAST_S)

    async def _follow(self) -> None:
        assert self.bridge is not None
        with contextlib.suppress(ApiUnavailable, OSError, ValueError):
            await self.bridge.follow(lambda: None)
        if self.data.connected:
            self.data.connected = False
            self.data.problem = "the daemon closed the connection"
            self.data.version += 1

    def _tick(self, loop: urwid.MainLoop, _: Any = None) -> None:
        try:
            self.refresh()
        except Exception as exc:  # a screen bug must not kill the operator's console
            log.exception("refresh")
            self.status.set_text(("error", f"display error: {exc!r}"))
        loop.set_alarm_in(TICK_S, self._tick)

    def _unhandled(self, key: str | tuple[str, int, int, int]) -> bool:
        try:
            return self.handle_key(key)
        except Exception as exc:
            log.exception("key %r", key)
            self.notify(f"internal error on {key!r}: {exc!r}", "error")
            return True

    async def run(self) -> int:
        self._quit = asyncio.Event()
        evl = urwid.AsyncioEventLoop(loop=asyncio.get_running_loop())
        self.loop = urwid.MainLoop(self.top, palette(self.color), event_loop=evl,
                                   unhandled_input=self._unhandled, handle_mouse=True)
        screen = self.loop.screen
        if isinstance(screen, urwid.display.raw.Screen):
            screen.set_terminal_properties(colors=16 if self.color else 1)
        with self.loop.start():
            self._spawn(self._follow(), "console subscription")
            self._spawn(self._poll(), "console poll")
            self._spawn(self._load_caps(self.current, slow=True), "console load")
            self.loop.set_alarm_in(TICK_S, self._tick)
            await self._quit.wait()
        await cancel_and_wait(list(self._tasks))
        if self.bridge is not None:
            await self.bridge.close()
        return 0


def _has_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def run_console(path: Path, token: str | None = None, color: bool = True,
                      unicode: bool = True, start: str | None = None) -> int:
    """Connect, then run the UI until q. A daemon that is down or refuses us is a message
    on stderr and exit status 1, never a traceback."""
    data = ConsoleData()
    bridge = Bridge(path, data, token)
    try:
        await bridge.connect()
    except (ApiUnavailable, ApiRequestError) as exc:
        await bridge.close()
        print(f"autogrid console: {exc}", file=sys.stderr)
        return 1
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        await bridge.close()
        print(f"autogrid console: the daemon answers ({data.user} is {data.role}), but the "
              f"console needs a terminal; use `autogrid status` in scripts", file=sys.stderr)
        return 1
    app = ConsoleApp(data, bridge, color=color, unicode=unicode)
    if start:
        app.go(start)
    return await app.run()


def done_text(what: str, result: Any) -> str:
    """What the gateway answered, in words: the device's read-back when it reports one,
    the site mode when that changed, control's note when it keeps a load off."""
    if not isinstance(result, dict):
        return f"Done: {what}"
    parts = []
    if "read_back" in result:
        parts.append(f"device took {result['read_back']}")
    if isinstance(result.get("mode"), str):
        parts.append(f"site mode now {result['mode']}")
    if isinstance(result.get("note"), str):
        parts.append(result["note"])
    changed = result.get("changed")
    if isinstance(changed, dict):  # strategy_set: each field that changed, or none did
        parts.append(", ".join(f"{k} now {v.get('to') if isinstance(v, dict) else v}"
                               for k, v in changed.items()) or "nothing changed")
    return f"Done: {what}" + (f" ({'; '.join(parts)})" if parts else "")

