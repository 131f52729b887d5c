"""Control commands on the local API. Viewing needs the viewer role, steering the operator
role, limits and strategy settings the engineer role. Every operator/engineer command is
written to the audit log with the caller's user name, refused ones with their reason."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from gateway.api import ApiError, ApiServer, Caller
from gateway.control.alarms import MAX_PAGE
from gateway.control.config import CLASS_RANK, Strategies
from gateway.model import NATURES, Kind

if TYPE_CHECKING:
    from gateway.control.component import ControlComponent

MAX_OVERRIDE_S = 7 * 86400.0
MODES = ("estop", "island", "reconnect", "reset", "black_start")


def _num(req: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    v = req.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        raise ApiError(f"'{key}' must be a number from {lo:g} to {hi:g}")
    return float(v)


def register(comp: ControlComponent, api: ApiServer) -> None:
    c = comp.controller
    store = comp.store

    def audited(action: str, fn: Callable[[dict[str, Any], Caller], Any]
                ) -> Callable[[dict[str, Any], Caller], Any]:
        """Audit the command's outcome: done, or refused with its reason. A crash is
        audited by the API (which turns it into a refusal); the store bounds the detail."""
        def handler(req: dict[str, Any], caller: Caller) -> Any:
            detail = {k: v for k, v in req.items() if k not in ("cmd", "id", "token")}
            try:
                result = fn(req, caller)
            except ApiError as exc:
                store.audit(caller.user, action, detail, ok=False, reason=str(exc))
                raise
            store.audit(caller.user, action, detail)
            return result
        return handler

    # -- viewing --------------------------------------------------------------------------
    def status(req: dict[str, Any], caller: Caller) -> Any:
        return {**c.status(), **comp.stats(),
                "alarms_active": sum(1 for a in store.alarms.values() if a.active)}

    def alarms(req: dict[str, Any], caller: Caller) -> Any:
        return store.listing(active_only=bool(req.get("active_only", False)))

    def audit(req: dict[str, Any], caller: Caller) -> Any:
        """A page of the audit log, newest first; the next page: ``before`` = last id."""
        limit = _num(req, "limit", 1, MAX_PAGE)
        before = req.get("before")
        if before is not None and (isinstance(before, bool) or not isinstance(before, int)):
            raise ApiError("'before' must be an audit entry id (an integer) from the "
                           "previous page")
        return store.audit_log(int(limit) if limit else 100, before)

    def sessions(req: dict[str, Any], caller: Caller) -> Any:
        now = c.clock()
        return {"active": [s.as_dict(now) for s in c.sessions.active.values()],
                "history": [s.as_dict(now) for s in reversed(c.sessions.history)]}

    def plan(req: dict[str, Any], caller: Caller) -> Any:
        p = c.plan
        if p is None:
            return None
        return {"created_s": p.created_s, "solver": p.solver, "status": p.status,
                "steps": [{"start_s": s.start_s, "end_s": s.end_s,
                           "battery_p_kw": s.battery_p_kw, "ev_p_kw": s.ev_p_kw,
                           "grid_p_kw": s.grid_p_kw} for s in p.steps]}

    # -- steering (operator) ----------------------------------------------------------------
    def ack(req: dict[str, Any], caller: Caller) -> Any:
        key = req.get("key")
        if not isinstance(key, str) or key not in store.alarms:
            raise ApiError(f"unknown alarm {key!r}")
        return store.ack(key, caller.user).as_dict()

    def ev_set(req: dict[str, Any], caller: Caller) -> Any:
        charger = req.get("charger")
        if charger not in c.sessions.active:
            raise ApiError(f"no car connected at {charger!r} (active: "
                           f"{', '.join(sorted(c.sessions.active)) or 'none'})")
        changes: dict[str, Any] = {}
        now = c.clock()
        if "priority" in req:
            if req["priority"] not in CLASS_RANK:
                raise ApiError(f"priority must be one of {', '.join(CLASS_RANK)}")
            changes["priority"] = req["priority"]
        dep = _num(req, "departure_s", now, now + 14 * 86400)
        dep_h = _num(req, "departure_in_h", 0, 14 * 24)
        if dep is not None or dep_h is not None:
            changes["departure_s"] = dep if dep is not None else now + (dep_h or 0.0) * 3600
        energy = _num(req, "energy_kwh", 0, 1000)
        if energy is not None:
            changes["energy_kwh"] = energy
        soc = _num(req, "departure_soc_pct", 0, 100)
        if soc is not None:
            changes["departure_soc_pct"] = soc
        if "v2g_allowed" in req:
            if not isinstance(req["v2g_allowed"], bool):
                raise ApiError("'v2g_allowed' must be true or false")
            changes["v2g_allowed"] = req["v2g_allowed"]
        if not changes:
            raise ApiError("nothing to change: give priority, departure_s, departure_in_h, "
                           "energy_kwh, departure_soc_pct or v2g_allowed")
        return c.sessions.set(charger, **changes).as_dict(now)

    def override_set(req: dict[str, Any], caller: Caller) -> Any:
        dev_id, point, value = req.get("device"), req.get("point"), req.get("value")
        dev = comp.daemon.state.devices.get(dev_id) if isinstance(dev_id, str) else None
        if dev is None:
            raise ApiError(f"unknown device {dev_id!r}")
        spec = NATURES[dev.nature].get(point) if isinstance(point, str) else None
        if spec is None or not spec.writable or point == "watchdog_s" or \
                spec.kind not in (Kind.FLOAT, Kind.BOOL):
            raise ApiError(f"{point!r} is not a setpoint of a {dev.nature}")
        if spec.kind is Kind.BOOL and not isinstance(value, bool):
            raise ApiError(f"'{point}' needs true or false")
        if spec.kind is Kind.FLOAT and (isinstance(value, bool)
                                        or not isinstance(value, int | float)):
            raise ApiError(f"'{point}' needs a number ({spec.unit})")
        duration = _num(req, "duration_s", 1, MAX_OVERRIDE_S) or 3600.0
        if c.modes.mode == "estop":
            raise ApiError("emergency stop is active: overrides are not applied")
        assert isinstance(dev_id, str) and isinstance(point, str)
        return c.set_override(dev_id, point, value, duration, caller.user).as_dict()

    def override_clear(req: dict[str, Any], caller: Caller) -> Any:
        dev_id, point = req.get("device"), req.get("point")
        keys = [k for k in c.overrides if k[0] == dev_id and (point is None or k[1] == point)]
        if not keys:
            raise ApiError(f"no override on {dev_id!r}" + (f".{point}" if point else ""))
        for k in keys:
            del c.overrides[k]
        return {"cleared": [f"{d}.{p}" for d, p in keys]}

    def shed(req: dict[str, Any], caller: Caller) -> Any:
        load = req.get("load")
        dev = comp.daemon.state.devices.get(load) if isinstance(load, str) else None
        if dev is None or str(dev.nature) != "load":
            raise ApiError(f"{load!r} is not a load")
        duration = _num(req, "duration_s", 1, MAX_OVERRIDE_S) or 3600.0
        assert isinstance(load, str)
        return c.set_override(load, "enabled", False, duration, caller.user).as_dict()

    def restore(req: dict[str, Any], caller: Caller) -> Any:
        load = req.get("load")
        if c.overrides.pop((str(load), "enabled"), None) is None:
            shed_by_control = c.memory.get("shed", [])
            if load in shed_by_control:
                raise ApiError(f"{load} was shed by the grid limit; it comes back when "
                               "there is room")
            raise ApiError(f"{load!r} was not shed by an operator")
        return {"restored": load}

    def mode(req: dict[str, Any], caller: Caller) -> Any:
        want = req.get("mode")
        if want not in MODES:
            raise ApiError(f"mode must be one of {', '.join(MODES)}")
        why = c.request_mode(str(want), f"operator {caller.user}: "
                                        f"{req.get('reason') or want}")
        if why is not None:
            raise ApiError(why)
        for dev, point, value in c.pending_commands:  # breakers act now, not next cycle
            comp.applier.command(dev, point, value)
        c.pending_commands = []
        comp._mode_changed()
        if want == "estop":  # zero everything now, without waiting for the cycle
            comp.run_cycle()
        return c.modes.as_dict()

    def estop(req: dict[str, Any], caller: Caller) -> Any:
        return mode({**req, "mode": "estop"}, caller)

    # -- engineering ------------------------------------------------------------------------
    def limits_set(req: dict[str, Any], caller: Caller) -> Any:
        grid = comp.daemon.cfg.site.grid
        changed: dict[str, float | None] = {}
        for key in ("import_limit_kw", "export_limit_kw"):
            if key in req:
                v = None if req[key] is None else _num(req, key, 0, 1e6)
                changed[key] = v
        if "peak_threshold_kw" in req:
            pt = None if req["peak_threshold_kw"] is None else _num(req, "peak_threshold_kw",
                                                                    0, 1e6)
            c.control.strategies.peak_threshold_kw = pt
            changed["peak_threshold_kw"] = pt
        if not changed:
            raise ApiError("give import_limit_kw, export_limit_kw and/or peak_threshold_kw")
        for key, v in changed.items():
            if key != "peak_threshold_kw":
                setattr(grid, key, v)
        return changed

    def strategy_set(req: dict[str, Any], caller: Caller) -> Any:
        settings = req.get("settings")
        if not isinstance(settings, dict) or not settings:
            raise ApiError("give 'settings': {name: value}, e.g. {\"peak_shaving\": false}")
        merged = {**c.control.strategies.model_dump(), **settings}
        try:
            new = Strategies.model_validate(merged)
        except ValidationError as err:
            first = err.errors()[0]
            raise ApiError(f"{'.'.join(str(x) for x in first['loc'])}: {first['msg']}"
                           ) from None
        for key in settings:
            setattr(c.control.strategies, key, getattr(new, key))
        return c.control.strategies.model_dump()

    for name, fn, help_ in (
            ("control_status", status, "mode, setpoints, strategies' notes, cycle stats"),
            ("alarms", alarms, "alarms {active_only?}"),
            ("audit", audit, f"audit log, newest first {{limit? (<= {MAX_PAGE}), before? "
                             f"(id: the next page)}}"),
            ("ev_sessions", sessions, "EV sessions, active and recent"),
            ("plan", plan, "the scheduler's current plan")):
        api.register(name, fn, role="viewer", help=help_)
    for name, fn, help_ in (
            ("alarm_ack", ack, "acknowledge an alarm {key}"),
            ("ev_set", ev_set, "change a session {charger, priority?, departure_s? | "
                               "departure_in_h?, energy_kwh?, departure_soc_pct?, "
                               "v2g_allowed?}"),
            ("override_set", override_set, "manual setpoint {device, point, value, "
                                           "duration_s?}"),
            ("override_clear", override_clear, "end overrides {device, point?}"),
            ("shed", shed, "shed a load {load, duration_s?}"),
            ("restore", restore, "restore a load an operator shed {load}"),
            ("mode_request", mode, "estop | island | reconnect | reset | black_start "
                                   "{mode, reason?}"),
            ("emergency_stop", estop, "all generation and charging to zero {reason?}")):
        api.register(name, audited(name, fn), role="operator", help=help_)
    for name, fn, help_ in (
            ("limits_set", limits_set, "grid limits {import_limit_kw?, export_limit_kw?, "
                                       "peak_threshold_kw?}"),
            ("strategy_set", strategy_set, "strategy switches and parameters "
                                           "{settings: {name: value}}")):
        api.register(name, audited(name, fn), role="engineer", help=help_)

