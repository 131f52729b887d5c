"""Emergency: stop, island, shed loads, restore; each behind a red two-step confirmation
and audited by the daemon with the caller's name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import urwid

from gateway.console import caps
from gateway.console.dialogs import Choice, TwoStep
from gateway.console.screens.base import Screen, pick

Target = tuple[str, str, dict[str, Any]]  # label, capability, parameters

ACTIONS = [
    ("s", "estop", "Emergency stop", "STOP",
     "All generation and charging go to zero and breakers open as configured. The site "
     "stays stopped until RESTORE."),
    ("i", "mode", "Island", "ISLAND",
     "Open the grid connection; the battery forms the grid and non-critical loads are shed."),
    ("h", "shed", "Shed loads", "SHED",
     "Switch off a load now (for an hour, or until restored); critical loads stay on."),
    ("r", "mode", "Restore", "RESTORE",
     "Leave emergency stop (black start in safe steps), reconnect an island, or switch a "
     "shed load back on."),
]


class EmergencyScreen(Screen):
    name = "emergency"
    title = "EMERGENCY"
    actions = [(k, label) for k, _, label, _, _ in ACTIONS]
    caps = ("control_status", "audit")

    def build(self) -> urwid.Widget:
        self.buttons: dict[str, urwid.Text] = {}
        items: list[urwid.Widget] = [
            urwid.Text(("emergency", " EMERGENCY CONTROLS ")),
            urwid.Text(("text", "Each action asks twice and is audited with your name.")),
            urwid.Divider()]
        for key, _, _, _, what in ACTIONS:
            t = urwid.Text("")
            self.buttons[key] = t
            items += [t, urwid.Padding(urwid.Text(("dim", what)), left=8)]
        self.mode = urwid.Text("")
        self.last = urwid.Text("")
        items += [urwid.Divider("─"), self.mode, self.last]
        return urwid.AttrMap(urwid.Filler(urwid.Pile(items), valign="top"), "text")

    def _status(self) -> dict[str, Any]:
        st = self.raw("control_status")
        return st if isinstance(st, dict) else {}

    def _mode(self) -> str | None:
        m = self._status().get("mode")
        if isinstance(m, dict):
            m = m.get("mode")
        return str(m) if m else None

    def pcc_breaker(self) -> str | None:
        """The PCC breaker as the daemon tells it: named in control_status when the daemon
        says so, else none when the site has no breaker at all; "?" when it has breakers
        but does not say which one is the PCC (the daemon then decides)."""
        st = self._status()
        for where in (st, st.get("emergency"), st.get("mode")):
            if isinstance(where, dict) and "pcc_breaker" in where:
                pcc = where["pcc_breaker"]
                return str(pcc) if pcc else None
        natures = [d.get("nature") for d in self.ctx.data.devices.values()]
        return "?" if "breaker" in natures else None

    def refusal(self, params: dict[str, Any]) -> str | None:
        """Why the daemon would refuse this mode request now (the mode machine's own rules
        on the mode, grid state and PCC breaker it reports), before anyone confirms it."""
        from gateway.control.config import ControlConfig, Emergency
        from gateway.control.modes import ModeMachine

        mode = self._mode()
        if mode is None:
            return None  # control_status not answered yet: the daemon decides
        cfg = ControlConfig(emergency=Emergency(pcc_breaker=self.pcc_breaker()))
        machine = ModeMachine(cfg, mode=mode)
        return machine.refuse(str(params.get("mode")), self._status().get("grid_ok") is True)

    def targets(self, key: str) -> list[Target]:
        """What the action can do right now (several: the operator picks one first)."""
        if key == "s":
            return [("Emergency stop", "estop", {"reason": "operator console"})]
        if key == "i":
            return [("Island", "mode", {"mode": "island", "reason": "operator console"})]
        if key == "h":
            return [(f"Shed {d}", "shed", {"load": d})
                    for d, dev in sorted(self.ctx.data.devices.items())
                    if dev.get("nature") == "load"]
        out: list[Target] = []
        mode = self._mode()
        if mode == "estop":
            out.append(("Reset emergency stop", "mode", {"mode": "reset"}))
        if mode == "island":
            out.append(("Reconnect to the grid", "mode", {"mode": "reconnect"}))
        for o in self._status().get("overrides", []):
            if isinstance(o, dict) and o.get("point") == "enabled" and o.get("value") is False:
                out.append((f"Restore load {o.get('device')}", "restore",
                            {"load": o.get("device")}))
        return out

    def handle(self, key: str) -> bool:
        for k, cap, label, word, what in ACTIONS:
            if key != k:
                continue
            if caps.resolve(cap, self.ctx.data.commands) is None:
                self.ctx.notify(f"{label}: {caps.missing(cap)}", "error")
                return True
            if not self.ctx.may(cap):
                return True
            targets = self.targets(k)
            if not targets:
                self.ctx.notify(f"{label}: nothing to do now", "error")
            elif len(targets) == 1:
                self._confirm(targets[0], word, what)
            else:
                opts = [(str(i), t[0]) for i, t in enumerate(targets)]
                self.ctx.dialog(Choice(f" {label} ", "Which one?", opts,
                                       self._picked(targets, word, what)))
            return True
        return False

    def _picked(self, targets: list[Target], word: str, what: str) -> Callable[[Any], None]:
        def done(answer: Any) -> None:
            self.ctx.close_dialog()
            if answer is not None:
                self._confirm(targets[int(answer)], word, what)
        return done

    def _confirm(self, target: Target, word: str, what: str) -> None:
        label, cap, params = target
        why = self.refusal(params) if cap == "mode" else None
        if why is not None:  # say it now, not after two confirmations
            self.ctx.notify(f"{label}: refused: {why}", "error")
            return
        self.ctx.dialog(TwoStep(label, word, what, self._done_for(cap, label, params)))

    def _done_for(self, cap: str, label: str, params: dict[str, Any]
                  ) -> Callable[[Any], None]:
        return lambda ok: self._done(cap, label, params, ok)

    def _done(self, cap: str, label: str, params: dict[str, Any], ok: Any) -> None:
        self.ctx.close_dialog()
        if ok:
            self.ctx.act(cap, params, label)
        else:
            self.ctx.notify(f"{label} cancelled; nothing was sent", "notice")

    def refresh(self) -> None:
        d = self.ctx.data
        for key, cap, label, _, _ in ACTIONS:
            cmd = caps.resolve(cap, d.commands)
            ok, why = d.allowed(cmd) if cmd else (False, caps.missing(cap))
            self.buttons[key].set_text([
                ("emergency" if ok else "key", f" {key} "), ("text", " "),
                ("emergency" if ok else "dim", f" {label.upper():<16}"),
                ("dim", "" if ok else f"  {why}")])
        mode = self._mode()
        _, reason = self.answer("control_status")
        st = self._status().get("mode")
        detail = ""
        if isinstance(st, dict):
            detail = f"  stage {st.get('stage')}  {st.get('reason') or ''}"
        self.mode.set_text([("text", "Site mode "),
                            ("alarm" if mode and mode != "normal" else "value", mode)
                            if mode else ("dim", reason or "unknown"), ("dim", detail)])
        recs, _ = self.answer("audit")
        last = [r for r in recs or [] if str(pick(r, "action", default="")) in
                ("emergency_stop", "mode_request", "shed", "restore")][:3]
        self.last.set_text([("dim", "Last: ")] + [
            ("text", f"{r.get('user')} {r.get('action')} "
                     f"{'ok' if r.get('ok', True) else 'REFUSED'}; ") for r in last]
            if last else "")
