"""The site's operating mode and the safe sequences between modes.

normal -> island        grid lost (protection or the PCC meter) or an operator: PCC opens
island -> reconnect     grid healthy for ``reconnect_delay_s`` (or an operator, if healthy)
reconnect               stage 0 (critical loads only) -> close PCC -> stage 1 (+ essential)
                        -> stage 2 (+ deferrable, PV, EVs) -> normal, ``step_delay_s`` apart
any -> estop            operator: generation and charging to zero, breakers opened
estop -> black_start    operator reset when breakers were opened (else straight to normal)
black_start             stage -1 (everything off) -> close breakers -> stage 0, 1, 2 -> normal
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.control.config import ControlConfig

MODES = ("normal", "island", "reconnect", "estop", "black_start")
Command = tuple[str, str, bool]  # device, point, value (breaker trip/close)


@dataclass
class ModeMachine:
    cfg: ControlConfig
    mode: str = "normal"
    stage: int = 0
    since: float = 0.0  # when the current mode/stage began
    reason: str = ""
    grid_ok_since: float | None = None
    closing: list[str] = field(default_factory=list)  # breakers we are closing
    history: list[dict[str, Any]] = field(default_factory=list)

    def _enter(self, mode: str, now: float, reason: str, stage: int = 0) -> None:
        self.history.append({"ts": now, "from": self.mode, "to": mode, "reason": reason})
        del self.history[:-50]
        self.mode, self.stage, self.since, self.reason = mode, stage, now, reason

    # -- requests (operators, protection) -------------------------------------------------
    def refuse(self, want: str, grid_ok: bool) -> str | None:
        """Why ``want`` cannot be entered now (None = allowed)."""
        if want not in ("island", "reconnect", "estop", "reset", "black_start"):
            return f"unknown mode request {want!r}"
        if want == "estop":
            return None
        if self.mode == "estop" and want != "reset":
            return "emergency stop is active: reset it first"
        if want == "island" and self.mode == "island":
            return "already islanded"
        if want == "island" and self.cfg.emergency.pcc_breaker is None:
            return "no PCC breaker configured (control.emergency.pcc_breaker)"
        if want == "reconnect":
            if self.mode != "island":
                return f"reconnect needs island mode (mode is {self.mode})"
            if not grid_ok:
                return "the grid is not healthy at the PCC"
        if want == "reset" and self.mode != "estop":
            return f"nothing to reset (mode is {self.mode})"
        if want == "black_start" and self.mode not in ("island", "estop", "normal"):
            return f"black start not possible from {self.mode}"
        return None

    def request(self, want: str, now: float, reason: str) -> list[Command]:
        """Enter the requested mode (already validated); returns breaker commands."""
        em = self.cfg.emergency
        if want == "estop":
            self._enter("estop", now, reason)
            return [(b, "trip", True) for b in em.estop_open_breakers]
        if want == "island":
            self._enter("island", now, reason)
            return [(em.pcc_breaker, "trip", True)] if em.pcc_breaker else []
        if want == "reconnect":
            self._enter("reconnect", now, reason)
            return []
        if want == "reset":
            if em.estop_open_breakers:
                self._enter("black_start", now, reason, stage=-1)
            else:
                self._enter("normal", now, reason)
            return []
        self._enter("black_start", now, reason, stage=-1)
        return []

    # -- every cycle ----------------------------------------------------------------------
    def step(self, now: float, grid_ok: bool | None, breakers: dict[str, bool | None]
             ) -> list[Command]:
        """Advance automatic transitions. ``grid_ok``: the PCC shows a healthy grid (True),
        a lost one (False) or nothing usable (None); ``breakers``: id -> closed or None."""
        em = self.cfg.emergency
        if grid_ok:
            if self.grid_ok_since is None:
                self.grid_ok_since = now
        else:
            self.grid_ok_since = None
        if self.mode == "normal" and grid_ok is False and em.pcc_breaker is not None \
                and self.cfg.protection.grid_loss_trip and self._pcc_known(breakers):
            return self.request("island", now, "grid lost")
        if self.mode == "island" and self.grid_ok_since is not None \
                and now - self.grid_ok_since >= em.reconnect_delay_s:
            self._enter("reconnect", now, "grid healthy again")
            return []
        if self.mode not in ("reconnect", "black_start"):
            return []
        if now - self.since < em.step_delay_s:
            return []
        targets = [b for b in ([em.pcc_breaker] if em.pcc_breaker else [])
                   + list(em.estop_open_breakers)]
        open_ = [b for b in dict.fromkeys(targets) if breakers.get(b) is False]
        if self.stage <= 0 and open_:
            if self.mode == "reconnect" and grid_ok is False:
                self._enter("island", now, "grid lost again during reconnection")
                return []
            if self.closing != open_:
                self.closing = open_
                self.since = now
                return [(b, "close", True) for b in open_]
            return []  # waiting for the breakers to report closed
        self.closing = []
        if self.stage < 2:
            self.stage += 1
            self.since = now
            return []
        self._enter("normal", now, f"{self.mode} complete")
        return []

    def _pcc_known(self, breakers: dict[str, bool | None]) -> bool:
        pcc = self.cfg.emergency.pcc_breaker
        return pcc is not None and breakers.get(pcc) is not False

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "stage": self.stage, "since": self.since,
                "reason": self.reason, "history": list(self.history[-10:])}
