"""The site's operating mode and the safe sequences between modes.

normal -> island        grid lost (protection or the PCC meter) while a battery forms the
                        island, or an operator: PCC opens, then the battery is commanded
                        grid-forming (by the emergency strategy), non-critical loads shed
normal -> black_start   grid lost and the site went dark (no battery forming): from the battery
island -> black_start   the island collapsed (the battery stopped forming): from the battery
island -> reconnect     grid healthy for ``reconnect_delay_s`` (or an operator, if healthy);
                        an island an operator asked for is left only by an operator
reconnect               stage 0 (critical loads only) -> close PCC -> the battery leaves
                        grid-forming -> stage 1 (+ essential) -> stage 2 (+ deferrable, PV,
                        EVs) -> normal, ``step_delay_s`` apart
any -> estop            operator: generation and charging to zero, breakers opened
estop -> black_start    operator reset when breakers were opened (else straight to normal)
black_start, grid       (grid healthy when it starts) stage -1 (everything off, no battery
                        forming) -> close breakers -> stage 0, 1, 2 -> normal
black_start, battery    (grid down) stage -2: PCC open, every load off -> stage -1: battery
                        grid-forming, wait until it forms -> stage 0 (critical loads) ->
                        stage 1 (+ essential) -> island. A grid that is healthy for
                        ``reconnect_delay_s`` before the island forms turns it into the grid kind.
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
    source: str = "grid"  # what a black start starts from: "grid" or "battery"
    was_forming: bool = False  # a battery formed the island in this mode
    held: bool = False  # an operator asked for this island: no automatic reconnection
    history: list[dict[str, Any]] = field(default_factory=list)

    def _enter(self, mode: str, now: float, reason: str, stage: int = 0) -> None:
        self.history.append({"ts": now, "from": self.mode, "to": mode, "reason": reason})
        del self.history[:-50]
        self.mode, self.stage, self.since, self.reason = mode, stage, now, reason
        self.was_forming = False
        self.held = False

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
        if want in ("black_start", "reset") and not grid_ok \
                and self.cfg.emergency.pcc_breaker is None \
                and (want == "black_start" or self.cfg.emergency.estop_open_breakers):
            return ("black start from the battery (the grid is not healthy) needs a PCC "
                    "breaker (control.emergency.pcc_breaker)")
        return None

    def request(self, want: str, now: float, reason: str, grid_ok: bool = True,
                operator: bool = False) -> list[Command]:
        """Enter the requested mode (already validated); returns breaker commands.
        ``grid_ok``: the grid is healthy now (a black start then starts from it);
        ``operator``: an operator asked (an island is then held until one reconnects)."""
        em = self.cfg.emergency
        if want == "estop":
            self._enter("estop", now, reason)
            return [(b, "trip", True) for b in em.estop_open_breakers]
        if want == "island":
            self._enter("island", now, reason)
            self.held = operator
            return [(em.pcc_breaker, "trip", True)] if em.pcc_breaker else []
        if want == "reconnect":
            self._enter("reconnect", now, reason)
            return []
        if want == "reset":
            if em.estop_open_breakers:
                return self._black_start(now, reason, grid_ok)
            self._enter("normal", now, reason)
            return []
        return self._black_start(now, reason, grid_ok)

    def _black_start(self, now: float, reason: str, grid_ok: bool) -> list[Command]:
        self.closing = []
        self.source = "grid" if grid_ok else "battery"
        if grid_ok:
            self._enter("black_start", now, reason, stage=-1)
            return []
        self._enter("black_start", now, reason, stage=-2)
        pcc = self.cfg.emergency.pcc_breaker
        return [(pcc, "trip", True)] if pcc else []

    # -- every cycle ----------------------------------------------------------------------
    def step(self, now: float, grid_ok: bool | None, breakers: dict[str, bool | None],
             forming: bool | None = None, loads_off: bool = True) -> list[Command]:
        """Advance automatic transitions. ``grid_ok``: the PCC shows a healthy grid (True),
        a lost one (False) or nothing usable (None); ``breakers``: id -> closed or None;
        ``forming``: a battery forms the island (None: no battery reports it);
        ``loads_off``: every load reports off."""
        em = self.cfg.emergency
        if grid_ok:
            if self.grid_ok_since is None:
                self.grid_ok_since = now
        else:
            self.grid_ok_since = None
        grid_back = self.grid_ok_since is not None \
            and now - self.grid_ok_since >= em.reconnect_delay_s
        if self.mode == "normal" and grid_ok is False and em.pcc_breaker is not None \
                and self.cfg.protection.grid_loss_trip and self._pcc_known(breakers):
            if forming is False:
                return self._black_start(now, "grid lost, site dark", False)
            return self.request("island", now, "grid lost")
        if self.mode == "island":
            if forming:
                self.was_forming = True
            elif forming is False and self.was_forming and not grid_ok:
                return self._black_start(now, "the island collapsed", False)
            if grid_back and not self.held:
                self._enter("reconnect", now, "grid healthy again")
            return []
        if self.mode == "black_start" and self.source == "battery":
            return self._battery_step(now, breakers, forming, loads_off, grid_back)
        if self.mode not in ("reconnect", "black_start"):
            return []
        if now - self.since < em.step_delay_s:
            return []
        if self.mode == "black_start" and self.stage <= 0 and forming:
            return []  # waiting for the battery to leave grid-forming before closing
        if self.mode == "reconnect" and self.stage == 0 and forming \
                and not self._open(breakers):
            return []  # PCC closed: waiting for the battery to leave grid-forming
        open_ = self._open(breakers)
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

    def _battery_step(self, now: float, breakers: dict[str, bool | None],
                      forming: bool | None, loads_off: bool, grid_back: bool
                      ) -> list[Command]:
        """Black start from the battery: PCC open and loads off, then grid-forming, then
        critical loads, then essential ones, then island operation."""
        em = self.cfg.emergency
        if self.stage < 0 and grid_back:  # the grid is back before the island: use it
            self.source, self.stage, self.since = "grid", -1, now
            return []
        if now - self.since < em.step_delay_s:
            return []
        if self.stage == -2:
            if (em.pcc_breaker is not None and breakers.get(em.pcc_breaker) is not False) \
                    or not loads_off:
                return []  # waiting for the PCC to open and every load to be off
        elif self.stage == -1:
            if forming is False:
                return []  # waiting for the battery to form the island
        elif self.stage >= 1:
            self._enter("island", now, "black start from the battery complete")
            self.was_forming = forming is True
            return []
        self.stage += 1
        self.since = now
        return []

    def _open(self, breakers: dict[str, bool | None]) -> list[str]:
        """Breakers of the PCC and the emergency stop that report open."""
        em = self.cfg.emergency
        targets = ([em.pcc_breaker] if em.pcc_breaker else []) + list(em.estop_open_breakers)
        return [b for b in dict.fromkeys(targets) if breakers.get(b) is False]

    def _pcc_known(self, breakers: dict[str, bool | None]) -> bool:
        pcc = self.cfg.emergency.pcc_breaker
        return pcc is not None and breakers.get(pcc) is not False

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "stage": self.stage, "since": self.since,
                "reason": self.reason, "source": self.source, "held": self.held,
                "history": list(self.history[-10:])}
