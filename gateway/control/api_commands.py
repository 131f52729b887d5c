"""Control commands on the local API. Viewing needs the viewer role, steering the operator
role, limits and strategy settings the engineer role. Every operator/engineer command is
written to the audit log with the caller's user name, refused ones with their reason."""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from gateway.api import ApiError, ApiServer, Caller
from gateway.control.alarms import MAX_PAGE
from gateway.control.config import CLASS_RANK, Strategies
from gateway.control.safety import COMMAND_POINTS, VIEW_POINTS
from gateway.control.strategy_settings import changes, merge_settings, setting_error
from gateway.model import NATURES, Kind, Quality

if TYPE_CHECKING:
    from gateway.control.applier import WriteOutcome
    from gateway.control.component import ControlComponent

MAX_OVERRIDE_S = 7 * 86400.0
MODES = ("estop", "island", "reconnect", "reset", "black_start")
ANSWER_S = 5.0  # how long a reply waits for the device's answer to a write


def _num(req: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    v = req.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ApiError(f"'{key}' must be a number from {lo:g} to {hi:g}")
    if not math.isfinite(v):
        raise ApiError(f"'{key}' must be a finite number (found {v})")
    if not lo <= v <= hi:
        raise ApiError(f"'{key}' must be a number from {lo:g} to {hi:g}")
    return float(v)


async def _answer(fut: asyncio.Future[WriteOutcome], what: str, then: str) -> WriteOutcome:
    """The device's answer to a write, or an ApiError saying it refused or did not answer
    within ANSWER_S (``then``: what happens next, e.g. that it is retried)."""
    try:
        outcome = await asyncio.wait_for(asyncio.shield(fut), ANSWER_S)
    except TimeoutError:
        raise ApiError(f"device timed out: {what} not answered within {ANSWER_S:g} s; "
                       f"{then}") from None
    if not outcome.ok:
        raise ApiError(f"device refused/timed out: {what}: {outcome.error}; {then}")
    return outcome


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    return isinstance(a, int | float) and isinstance(b, int | float) and abs(a - b) < 0.05


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
                cluster = getattr(getattr(comp.daemon, "ports", None), "cluster", None)
                if cluster is not None and not cluster.leading():
                    # the controller here does not run: the leader carries it out
                    result = cluster.forward(action, req, caller)
                else:
                    result = fn(req, caller)
            except ApiError as exc:
                store.audit(caller.user, action, detail, ok=False, reason=str(exc))
                raise
            if inspect.isawaitable(result):  # audited once the device has answered
                return _audit_when_done(result, caller.user, action, detail)
            store.audit(caller.user, action, detail)
            return result
        return handler

    async def _audit_when_done(result: Awaitable[Any], user: str, action: str,
                               detail: dict[str, Any]) -> Any:
        try:
            out = await result
        except ApiError as exc:
            store.audit(user, action, detail, ok=False, reason=str(exc))
            raise
        store.audit(user, action, detail)
        return out

    # -- viewing --------------------------------------------------------------------------
    def status(req: dict[str, Any], caller: Caller) -> Any:
        out = {**c.status(), **comp.stats(),
               "alarms_active": sum(1 for a in store.alarms.values() if a.active)}
        cluster = getattr(getattr(comp.daemon, "ports", None), "cluster", None)
        if cluster is not None and not cluster.leading():  # the site's mode, not ours
            out = cluster.follower_status(out)
        return out

    def alarms(req: dict[str, Any], caller: Caller) -> Any:
        rows = store.listing(active_only=bool(req.get("active_only", False)))
        cluster = getattr(getattr(comp.daemon, "ports", None), "cluster", None)
        return rows if cluster is None else cluster.site_alarms(rows)

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
        """Acknowledge an alarm once: a second acknowledgement of the same occurrence
        answers who acknowledged it and writes no second audit row."""
        key = req.get("key")
        detail = {"key": key}
        gw = req.get("gateway")
        cluster = getattr(getattr(comp.daemon, "ports", None), "cluster", None)
        if gw is None and cluster is not None and isinstance(key, str) and \
                key not in store.alarms and key.split("/", 1)[0] in \
                [g.id for g in comp.daemon.cfg.gateways]:
            gw, key = key.split("/", 1)  # another gateway's, as `alarms` lists it
        if gw is not None and gw != comp.daemon.gateway_id:
            if cluster is None:
                raise ApiError(f"this gateway is not in a cluster: no gateway {gw!r} here")
            return _ack_elsewhere(cluster.forward("alarm_ack", {"key": key}, caller,
                                                  to=str(gw)), caller.user,
                                  {**detail, "gateway": gw})
        if not isinstance(key, str) or key not in store.alarms:
            why = f"unknown alarm {key!r}"
            store.audit(caller.user, "alarm_ack", detail, ok=False, reason=why)
            raise ApiError(why)
        if store.alarms[key].acked_s is not None:
            return {**store.alarms[key].as_dict(), "already_acknowledged": True}
        out = store.ack(key, caller.user).as_dict()
        store.audit(caller.user, "alarm_ack", detail)
        return out

    async def _ack_elsewhere(result: Awaitable[Any], user: str, detail: dict[str, Any]
                             ) -> Any:
        """Another gateway's alarm: acknowledged there, audited here with its answer."""
        try:
            out = await result
        except ApiError as exc:
            store.audit(user, "alarm_ack", detail, ok=False, reason=str(exc))
            raise
        store.audit(user, "alarm_ack", detail)
        return out

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
        """Hold ``value`` on a writable point the device's template maps (a breaker's trip
        or close is a one-shot command instead), write it now and answer with what the
        device took; refused with the reason when it cannot be applied now."""
        dev_id, point, value = req.get("device"), req.get("point"), req.get("value")
        dev = comp.daemon.state.devices.get(dev_id) if isinstance(dev_id, str) else None
        if dev is None or not isinstance(dev_id, str):
            raise ApiError(f"unknown device {dev_id!r}")
        spec = NATURES[dev.nature].get(point) if isinstance(point, str) else None
        if spec is None or not spec.writable or point == "watchdog_s" or \
                spec.kind not in (Kind.FLOAT, Kind.BOOL) or not isinstance(point, str):
            raise ApiError(f"{point!r} is not a setpoint of a {dev.nature}")
        if spec.kind is Kind.BOOL and not isinstance(value, bool):
            raise ApiError(f"'{point}' needs true or false")
        if spec.kind is Kind.FLOAT and (isinstance(value, bool)
                                        or not isinstance(value, int | float)):
            raise ApiError(f"'{point}' needs a number ({spec.unit})")
        if isinstance(value, float) and not math.isfinite(value):
            raise ApiError(f"'{point}' must be a finite number (found {value})")
        duration = _num(req, "duration_s", 1, MAX_OVERRIDE_S) or 3600.0
        if c.modes.mode == "estop":
            raise ApiError("emergency stop is active: overrides are not applied")
        io = comp.daemon.ios.get(dev_id)
        cluster = getattr(getattr(comp.daemon, "ports", None), "cluster", None)
        elsewhere = cluster.polled_elsewhere(dev_id) if cluster is not None else None
        if io is None and elsewhere is None:
            raise ApiError(f"{dev_id} is not polled by this gateway")
        writable = getattr(getattr(io, "template", None), "writable", None)
        if isinstance(writable, list) and point not in writable:
            raise ApiError(f"{dev_id}'s template has no writable '{point}' (writable: "
                           f"{', '.join(writable) or 'none'})")
        quality = dev.device_quality(time.time())
        if quality is not Quality.GOOD:
            raise ApiError(f"{dev_id} is {quality}: nothing can be written to it now")
        if dev_id in c.lockouts:
            raise ApiError(f"{dev_id} is held at zero by protection: {c.lockouts[dev_id]}")
        if point in COMMAND_POINTS:
            if value is not True:
                raise ApiError(f"'{point}' is a command: send true to {point} the breaker")
            if io is None and cluster is not None:
                # another gateway polls it: the leader hands it over through the store
                return cluster.command(dev_id, point, True, caller.user)
            return _breaker_command(dev_id, point)
        if not comp.control.controller:
            raise ApiError("the site controller does not run on this gateway "
                           "(control.controller: false), so nothing would hold an override")
        if point in VIEW_POINTS.get(dev.nature, ()) and dev_id not in c.visible:
            need = " (a battery needs a usable soc_pct)" if str(dev.nature) == "bess" else ""
            raise ApiError(f"control cannot see {dev_id} now{need}: override not applied")
        o = c.set_override(dev_id, point, value, duration, caller.user)
        comp.run_cycle()  # through clamps, ramps and the applier now, not next cycle
        return _override_written(o.as_dict(), dev_id, point)

    async def _breaker_command(dev_id: str, point: str) -> Any:
        fut = comp.applier.command(dev_id, point, True)
        assert fut is not None
        outcome = await _answer(fut, f"{dev_id} {point}",
                                "retried until the breaker takes it")
        return {"device": dev_id, "point": point, "command": True, **outcome.as_dict()}

    async def _override_written(o: dict[str, Any], dev_id: str, point: str) -> Any:
        if getattr(comp.daemon.ports, "cluster", None) is not None:
            return await _cluster_written(o, dev_id, point)
        fut = comp.applier.waiter(dev_id, point)
        if fut is None and c.last.get(dev_id, {}).get(point) is None:
            raise ApiError(f"control produced no {point} for {dev_id} this cycle: the "
                           f"override is set but nothing was written")
        if fut is None:  # the device already has the value (within the dead-band)
            return {**o, "written": True, "read_back": comp.applier.last_written(dev_id, point),
                    "at": None, "unchanged": True}
        outcome = await _answer(fut, f"{dev_id}.{point}",
                                "the override stays set and is retried")
        return {**o, **outcome.as_dict(), "value_written": outcome.value}

    async def _cluster_written(o: dict[str, Any], dev_id: str, point: str) -> Any:
        """On a cluster the setpoint goes through the store to this gateway's applier: the
        reply is the device's answer to the value control now holds; none within ANSWER_S: it
        already had the value (said so, with what was last written) or it did not answer."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[WriteOutcome] = loop.create_future()

        def listener(out: WriteOutcome) -> None:
            # (an answer to a write from before the override is not the override's)
            if out.device == dev_id and out.point == point and not fut.done() and \
                    _close(out.value, c.last.get(dev_id, {}).get(point)):
                fut.set_result(out)
        cluster = comp.daemon.ports.cluster
        reports = cluster.on_report if cluster is not None else []  # (another gateway's)
        comp.applier.on_outcome.append(listener)
        reports.append(listener)
        try:
            outcome = await _answer(fut, f"{dev_id}.{point}",
                                    "the override stays set and is retried")
        except ApiError:
            want, had = c.last.get(dev_id, {}).get(point), comp.applier.last_written(
                dev_id, point)
            if want is None or had is None or not _close(want, had):
                raise
            return {**o, "written": True, "read_back": had, "at": None, "unchanged": True}
        finally:
            comp.applier.on_outcome.remove(listener)
            reports.remove(listener)
        return {**o, **outcome.as_dict(), "value_written": outcome.value}

    def override_clear(req: dict[str, Any], caller: Caller) -> Any:
        dev_id, point = req.get("device"), req.get("point")
        keys = [k for k in c.overrides if k[0] == dev_id and (point is None or k[1] == point)]
        if not keys:
            raise ApiError(f"no override on {dev_id!r}" + (f".{point}" if point else ""))
        for k in keys:
            del c.overrides[k]
        return {"cleared": [f"{d}.{p}" for d, p in keys]}

    def shed(req: dict[str, Any], caller: Caller) -> Any:
        """Switch a load off for ``duration_s``; answers once the load took it."""
        load = req.get("load")
        dev = comp.daemon.state.devices.get(load) if isinstance(load, str) else None
        if dev is None or str(dev.nature) != "load" or not isinstance(load, str):
            raise ApiError(f"{load!r} is not a load")
        duration = _num(req, "duration_s", 1, MAX_OVERRIDE_S) or 3600.0
        quality = dev.device_quality(time.time())
        if quality is not Quality.GOOD:
            raise ApiError(f"{load} is {quality}: it cannot be switched now")
        if not comp.control.controller:
            raise ApiError("the site controller does not run on this gateway "
                           "(control.controller: false), so nothing would hold the shed")
        o = c.set_override(load, "enabled", False, duration, caller.user)
        comp.run_cycle()
        return _override_written(o.as_dict(), load, "enabled")

    def restore(req: dict[str, Any], caller: Caller) -> Any:
        """End an operator's shed; answers with what the load took (control may still
        keep it off for the grid limit, and says so)."""
        load = req.get("load")
        if c.overrides.pop((str(load), "enabled"), None) is None:
            shed_by_control = c.memory.shed
            if load in shed_by_control:
                raise ApiError(f"{load} was shed by the grid limit; it comes back when "
                               "there is room")
            raise ApiError(f"{load!r} was not shed by an operator")
        comp.run_cycle()
        return _restored(str(load))

    async def _restored(load: str) -> Any:
        fut = comp.applier.waiter(load, "enabled")
        if fut is None:
            on = c.last.get(load, {}).get("enabled")
            note = {} if on else {"note": "control keeps it off for now (grid limit or "
                                          "island); it comes back when there is room"}
            return {"restored": load, "enabled": on, **note}
        outcome = await _answer(fut, f"{load}.enabled", "retried until the load takes it")
        return {"restored": load, "enabled": outcome.value, **outcome.as_dict()}

    def mode(req: dict[str, Any], caller: Caller) -> Any:
        want = req.get("mode")
        if want not in MODES:
            raise ApiError(f"mode must be one of {', '.join(MODES)}")
        why = c.request_mode(str(want), f"operator {caller.user}: "
                                        f"{req.get('reason') or want}", operator=True)
        if why is not None:
            raise ApiError(why)
        sent = []
        for dev, point, value in c.pending_commands:  # breakers act now, not next cycle
            fut = comp.applier.command(dev, point, value)
            if fut is not None:
                sent.append((dev, point, fut))
        c.pending_commands = []
        comp._mode_changed()
        if want == "estop":  # zero everything now, without waiting for the cycle
            comp.run_cycle()
        if not sent:
            return c.modes.as_dict()
        return _breakers_answered(str(want), sent)

    async def _breakers_answered(want: str, sent: list[tuple[str, str, asyncio.Future[
            WriteOutcome]]]) -> Any:
        """The mode's reply waits for its breakers: what each took, or an error that says
        the mode was entered but a breaker has not acted yet (and is being retried)."""
        answers = await asyncio.gather(
            *(_answer(fut, f"{dev} {point}", "retried until the breaker takes it")
              for dev, point, fut in sent), return_exceptions=True)
        done, failed = [], []
        for (dev, point, _), a in zip(sent, answers, strict=True):
            if isinstance(a, BaseException):
                failed.append(str(a))
            else:
                done.append({"device": dev, "point": point, **a.as_dict()})
        if failed:
            state = ("the site is not islanded until it does" if want == "island"
                     else "the breaker has not acted yet")
            raise ApiError(f"mode {c.modes.mode} entered, but {'; '.join(failed)}: {state}")
        return {**c.modes.as_dict(), "breakers": done}

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
            c.control.strategies.peak_shaving.threshold_kw = pt  # the strategy's own section
            changed["peak_threshold_kw"] = pt
        if not changed:
            raise ApiError("give import_limit_kw, export_limit_kw and/or peak_threshold_kw")
        for key, v in changed.items():
            if key != "peak_threshold_kw":
                setattr(grid, key, v)
        if "peak_threshold_kw" in changed and not c.control.strategies.peak_shaving.enabled:
            return {**changed, "note": "peak shaving is off: the threshold holds once it is "
                                       "switched on"}
        return changed

    def strategy_set(req: dict[str, Any], caller: Caller) -> Any:
        """Switch strategies and set their parameters: ``{settings: {name: value}}``, where
        the value is a bool (the switch), a mapping of the section's fields, or the name is
        ``strategy.field``. All or nothing; the reply says what changed."""
        settings = req.get("settings")
        if not isinstance(settings, dict) or not settings:
            raise ApiError("give 'settings': {strategy: true | false | {parameter: value}}, "
                           "e.g. {\"peak_shaving\": false} or "
                           "{\"peak_shaving.threshold_kw\": 180}")
        before = c.control.strategies.model_dump()
        try:
            new = Strategies.model_validate(merge_settings(before, settings))
        except ValidationError as err:
            raise ApiError("; ".join(setting_error(e) for e in err.errors(include_url=False))
                           ) from None
        after = new.model_dump()
        c.set_strategies(new)
        return {"changed": changes(before, after), "strategies": after}

    for name, fn, help_ in (
            ("control_status", status, "mode, setpoints, strategies' notes, cycle stats"),
            ("alarms", alarms, "alarms {active_only?}"),
            ("audit", audit, f"audit log, newest first {{limit? (<= {MAX_PAGE}), before? "
                             f"(id: the next page)}}"),
            ("ev_sessions", sessions, "EV sessions, active and recent"),
            ("plan", plan, "the scheduler's current plan")):
        api.register(name, fn, role="viewer", help=help_)
    api.register("alarm_ack", ack, role="operator", help="acknowledge an alarm {key, gateway? "
                                                         "(another gateway's, on a cluster)}")
    for name, fn, help_ in (
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
            ("strategy_set", strategy_set, "strategy switches and parameters {settings: "
                                           "{strategy: bool | {field: value}, "
                                           "strategy.field: value}}")):
        api.register(name, audited(name, fn), role="engineer", help=help_)

