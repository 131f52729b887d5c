"""Grid operations: grid limits, strategies on/off, battery setpoints, manual overrides."""

from __future__ import annotations

from typing import Any

import urwid

from gateway.console.dialogs import Form
from gateway.console.screens.base import Screen, pick
from gateway.console.widgets import Table, cell, fmt_time, fmt_value


def _num(text: str) -> float | None:
    text = text.strip()
    if not text or text.lower() in ("none", "off", "-"):
        return None
    return float(text)


def _enabled(section: object) -> bool | None:
    """A strategy's switch from its section in control_status (None: not a section)."""
    on = section.get("enabled") if isinstance(section, dict) else None
    return on if isinstance(on, bool) else None


class GridScreen(Screen):
    name = "grid"
    title = "Grid operations"
    actions = [("Tab", "switch list"), ("Space", "strategy on/off"), ("l", "limits"),
               ("n", "override"), ("x", "clear override")]
    caps = ("control_status",)

    def build(self) -> urwid.Widget:
        self.limits = urwid.Text("")
        self.strategies = Table(f"{'Strategy':<22}{'State':<8}  Last decision",
                                empty="no strategies")
        self.setpoints = urwid.Text("")
        self.overrides = Table(f"{'Override (device.point)':<30}{'Value':>10}"
                               f"  {'Expires':<10}{'By':<16}", empty="no active overrides")
        self.pile = urwid.Pile([
            ("pack", urwid.Text(("title", "Grid limits"))), ("pack", self.limits),
            ("pack", urwid.Divider("─")), ("pack", self.strategies.header_widget()),
            ("weight", 1, self.strategies), ("pack", urwid.Divider("─")),
            ("pack", urwid.Text(("title", "Battery setpoints"))), ("pack", self.setpoints),
            ("pack", urwid.Divider("─")), ("pack", self.overrides.header_widget()),
            ("weight", 1, self.overrides)])
        self.pile.focus_position = 4
        return self.pile

    def handle(self, key: str) -> bool:
        if key == "tab":
            self.pile.focus_position = 10 if self.pile.focus_position == 4 else 4
            return True
        if key == " ":
            name = self.strategies.focus_key()
            if name:
                on = _enabled(self._status().get("strategies", {}).get(name))
                self.ctx.act("strategy_set", {"settings": {name: not on}},
                             f"strategy {name} {'off' if on else 'on'}")
            return True
        if key == "l":
            lim = self._status().get("limits", {})
            self.ctx.dialog(Form(" Grid limits ", [
                ("import_limit_kw", "import limit kW", fmt_value(lim.get("import_limit_kw"))),
                ("export_limit_kw", "export limit kW", fmt_value(lim.get("export_limit_kw")))],
                self._limits_done, "Empty or 'none' removes a limit."))
            return True
        if key == "n":
            self.ctx.dialog(Form(" Manual override ", [
                ("device", "device", ""), ("point", "point", "p_set_kw"),
                ("value", "value", ""), ("duration_s", "expires after (s)", "900")],
                self._override_done, "Holds a setpoint against the controller until expiry."))
            return True
        if key == "x":
            oid = self.overrides.focus_key()
            if oid:
                dev, _, point = oid.partition(".")
                self.ctx.act("override_clear", {"device": dev, "point": point},
                             f"clear override {oid}")
            return True
        return False

    def _limits_done(self, answer: Any) -> None:
        self.ctx.close_dialog()
        if not answer:
            return
        try:
            params = {k: _num(v) for k, v in answer.items()}
        except ValueError:
            self.ctx.notify("limits must be numbers in kW", "error")
            return
        self.ctx.act("limits_set", params, "set grid limits")

    def _override_done(self, answer: Any) -> None:
        self.ctx.close_dialog()
        if not answer:
            return
        try:
            value: Any = float(answer["value"])
        except ValueError:
            value = {"true": True, "false": False}.get(answer["value"].lower(), answer["value"])
        try:
            duration = float(answer["duration_s"])
        except ValueError:
            self.ctx.notify("expiry must be a number of seconds", "error")
            return
        self.ctx.act("override_set", {"device": answer["device"], "point": answer["point"],
                                      "value": value, "duration_s": duration},
                     f"override {answer['device']}.{answer['point']}")

    def _status(self) -> dict[str, Any]:
        st = self.raw("control_status")
        return st if isinstance(st, dict) else {}

    def refresh(self) -> None:
        st = self._status()
        _, why = self.answer("control_status")
        lim = st.get("limits")
        if isinstance(lim, dict):
            parts: list[Any] = []
            for k, label in (("import_limit_kw", "import"), ("export_limit_kw", "export")):
                parts += [("text", f"{label} limit "), ("value", f"{fmt_value(lim.get(k))} kW   ")]
            grid = self.ctx.data.summary.get("grid_kw")
            parts += [("text", "grid now "), ("value", f"{fmt_value(grid)} kW"),
                      ("text", "   peak threshold "),
                      ("value", f"{fmt_value(lim.get('peak_threshold_kw'))} kW")]
            self.limits.set_text(parts)
        else:
            self.limits.set_text(("dim", why or "loading…"))
        strategies = st.get("strategies")
        if not isinstance(strategies, dict):
            self.strategies.set_rows([], empty=why or "no strategies")
        else:
            notes = st.get("notes", {}) if isinstance(st.get("notes"), dict) else {}
            rows = []
            for name, section in strategies.items():
                on = _enabled(section)
                if on is None:
                    continue  # not a strategy's section
                note = notes.get(name, "")
                rows.append((name, [("text", cell(name, 21) + " "),
                                    ("good" if on else "dim", cell("ON" if on else "off", 7)),
                                    ("dim", "  " + fmt_value(note))]))
            self.strategies.set_rows(rows)
        parts = []
        sp = st.get("setpoints", {}) if isinstance(st.get("setpoints"), dict) else {}
        for dev_id, d in sorted(self.ctx.data.devices.items()):
            if d.get("nature") != "bess":
                continue
            pts = d.get("points", {})
            target = sp.get(dev_id, {}).get("p_set_kw") if isinstance(sp.get(dev_id), dict) \
                else None
            parts += [("text", f"{dev_id:<14}"),
                      ("text", "p "),
                      ("value", f"{fmt_value(pts.get('p_kw', {}).get('value'))} kW  "),
                      ("text", "setpoint "),
                      ("value", f"{fmt_value(pts.get('p_set_kw', {}).get('value'))} kW  "),
                      ("text", "controller "), ("value", f"{fmt_value(target)} kW  "),
                      ("text", "SOC "),
                      ("value", f"{fmt_value(pts.get('soc_pct', {}).get('value'))} %\n")]
        self.setpoints.set_text(parts or [("dim", "no battery in this gateway")])
        ovs = st.get("overrides")
        if not isinstance(ovs, list):
            self.overrides.set_rows([], empty=why or "no active overrides")
        else:
            self.overrides.set_rows([
                (f"{r.get('device')}.{r.get('point')}", [
                    ("text", cell(f"{r.get('device')}.{r.get('point')}", 29) + " "),
                    ("value", cell(pick(r, "value"), 10, True) + "  "),
                    ("warn", cell(fmt_time(pick(r, "expires_s"), site_clock=True), 10)),
                    ("dim", cell(pick(r, "user", default=""), 16))])
                for r in ovs if isinstance(r, dict)])
