"""A readable text picture of the site: power flow and device health (demo, status)."""

from __future__ import annotations

import time
from typing import Any

# C0/C1 control characters and the bidirectional overrides: a device (a Modbus string
# register, a DNP3 octet string, an error text) must not be able to move the cursor, clear
# the screen or reorder what an operator reads.
_UNSAFE = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0))}
_UNSAFE.update({c: f"\\u{c:04x}" for c in (*range(0x202a, 0x202f), *range(0x2066, 0x206a))})
_UNSAFE.update({ord("\t"): " ", ord("\n"): " ", ord("\r"): " "})


def safe_text(text: str) -> str:
    """``text`` with every control character shown as an escape (ESC -> ``\\x1b``), so
    a device-supplied string cannot drive the operator's terminal."""
    return text.translate(_UNSAFE)


def sanitized(obj: Any) -> Any:
    """A copy of a JSON-like answer with every string (keys too) made safe to print.
    (Hot: the console runs every live update through it; printable text is kept as is.)"""
    t = type(obj)
    if t is float or t is int or t is bool or obj is None:
        return obj
    if t is str:
        return obj if obj.isprintable() else obj.translate(_UNSAFE)
    if t is dict:
        return {(k if type(k) is not str or k.isprintable() else k.translate(_UNSAFE)):
                sanitized(v) for k, v in obj.items()}
    if t is list or t is tuple:
        return [sanitized(v) for v in obj]
    return obj

_FLOW = [
    ("Grid", "grid_kw", "importing", "exporting"),
    ("PV", "pv_kw", "producing", "consuming"),
    ("Wind", "wind_kw", "producing", "consuming"),
    ("Battery", "battery_kw", "discharging", "charging"),
    ("EV chargers", "ev_kw", "charging EVs", "V2G to site"),
    ("Site load", "load_kw", "consuming", "feeding back"),
]

_QUALITY_MARK = {"good": "ok ", "stale": "old", "offline": "OFF"}


def _kw(value: Any) -> str:
    if not isinstance(value, int | float):
        return "     --   "
    return f"{0.0 if abs(value) < 0.05 else value:8.1f} kW"  # no "-0.0"


def _direction(value: Any, pos: str, neg: str) -> str:
    if not isinstance(value, int | float):
        return "no data"
    if abs(value) < 0.05:
        return "idle"
    return pos if value > 0 else neg


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{0.0 if abs(v) < 0.05 else v:.1f}"
    return "--" if v is None else str(v)


def point_text(name: str, p: dict[str, Any]) -> str:
    unit = p.get("unit") or ""
    return f"{name}={_fmt_value(p.get('value'))}{' ' + unit if unit else ''}"


# The points worth one glance per nature, in the demo's device table.
KEY_POINTS = {
    "pv_inverter": ["p_kw", "p_limit_pct", "state"],
    "wind_turbine": ["p_kw", "wind_speed_ms", "state"],
    "bess": ["p_kw", "soc_pct", "cell_temp_max_c"],
    "bms": ["soc_pct", "i_pack_a", "cell_temp_max_c"],
    "evse": ["p_kw", "state", "ev_soc_pct"],
    "meter": ["p_kw", "v_v", "f_hz"],
    "breaker": ["closed", "i_a"],
    "load": ["p_kw", "enabled"],
}


NO_CONTROL = "monitoring only (no site control)"


def mode_text(control_status: Any) -> str:
    """The site mode as the console and status both say it."""
    mode = control_status.get("mode") if isinstance(control_status, dict) else None
    if isinstance(mode, dict):
        mode = mode.get("mode")
    return str(mode) if mode else NO_CONTROL


def active_alarms(alarms: Any) -> list[dict[str, Any]] | None:
    """The active alarms of an ``alarms`` answer; None when no alarm source answered."""
    from gateway.console.data import is_active  # the console's own test, for parity

    if not isinstance(alarms, list):
        return None
    return [a for a in alarms if isinstance(a, dict) and is_active(a)]


def site_time_text(answer: Any, now: float | None = None) -> str | None:
    """The site clock in words from a ``site_time`` answer (None without one)."""
    if not isinstance(answer, dict):
        return None
    from gateway.sitetime import SiteClock

    return SiteClock.from_answer(answer, now).describe(now)


async def fetch_picture(client: Any) -> dict[str, Any]:
    """Everything ``autogrid status`` shows, from the API: the snapshot, and the mode,
    alarms and site time when the daemon offers them (the console reads the same)."""
    snap: dict[str, Any] = await client.request("snapshot")
    have = {c["cmd"] for c in await client.request("commands")}
    status = await client.request("control_status") if "control_status" in have else None
    alarms = await client.request("alarms") if "alarms" in have else None
    clock = await client.request("site_time") if "site_time" in have else None
    snap["mode"] = mode_text(status)
    snap["alarms"] = active_alarms(alarms)
    snap["site_time"] = clock
    if "cluster_site" in have:  # a cluster: the site as the leader stored it
        site_wide(snap, await client.request("cluster_site"))
    return snap


def site_wide(snap: dict[str, Any], site: Any) -> None:
    """On a cluster every gateway shows the same site: the mode and overrides the leader
    stored, and the alarms every gateway published (this gateway's own from itself)."""
    if not isinstance(site, dict):
        return
    ctl = site.get("control")
    if isinstance(ctl, dict):
        snap["mode"] = mode_text(ctl) + (" (held by an operator)" if ctl.get("held") else "")
        snap["overrides"] = [o for o in ctl.get("overrides") or [] if isinstance(o, dict)]
    me = snap.get("gateway")
    if any(isinstance(a, dict) and a.get("gateway") for a in snap.get("alarms") or []):
        return  # `alarms` already lists every gateway's
    mine = [{**a, "gateway": me} for a in snap.get("alarms") or []]
    others = [{**a, "gateway": gw} for gw, alarms in (site.get("alarms") or {}).items()
              if gw != me and isinstance(alarms, list) for a in alarms if isinstance(a, dict)]
    if snap.get("alarms") is not None or others:
        snap["alarms"] = mine + (active_alarms(others) or [])


def render(snapshot: dict[str, Any], title: str = "AutoGrid", now: float | None = None) -> str:
    """The snapshot (from SiteState.snapshot or the API) as an operator-readable page; with
    ``mode``, ``alarms`` and ``site_time`` (fetch_picture) also those."""
    now = time.time() if now is None else now
    snapshot = sanitized(snapshot)
    s = snapshot["summary"]
    when = site_time_text(snapshot.get("site_time"), now) or \
        time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(now))
    lines = [f"{title} — site time {when}", "", "Power flow"]
    for label, key, pos, neg in _FLOW:
        if key == "wind_kw" and s.get(key) is None:
            continue
        lines.append(f"  {label:<12}{_kw(s.get(key))}  {_direction(s.get(key), pos, neg)}")
    soc = s.get("battery_soc_pct")
    if isinstance(soc, int | float):
        lines.append(f"  {'Battery SOC':<12}{soc:8.1f} %")
    if "mode" in snapshot:
        alarms = snapshot.get("alarms")
        n = "n/a" if alarms is None else str(len(alarms))
        lines += ["", f"Site mode {snapshot['mode']}   Active alarms {n}"]
        for a in (alarms or [])[:5]:
            where = f"{a['gateway']} " if a.get("gateway") else ""
            lines.append(f"  [{a.get('severity', '?')}] {where}{a.get('source', '?')}: "
                         f"{a.get('message', '')}")
        if alarms and len(alarms) > 5:
            lines.append(f"  ... and {len(alarms) - 5} more (autogrid console, Alarms)")
        for o in snapshot.get("overrides") or []:
            left = o.get("expires_at")
            lines.append(f"  override {o.get('device')}.{o.get('point')} = {o.get('value')} "
                         f"by {o.get('user')}"
                         + (f", {max(0.0, (left - now) / 60):.0f} min left"
                            if isinstance(left, int | float) else ""))
    counts = s.get("devices", {})
    lines += ["", f"Devices  {counts.get('good', 0)} ok, {counts.get('stale', 0)} stale, "
                  f"{counts.get('offline', 0)} offline"]
    for dev_id, d in sorted(snapshot.get("devices", {}).items()):
        pts = d.get("points", {})
        keys = KEY_POINTS.get(d.get("nature", ""), [])
        vals = "  ".join(point_text(k, pts[k]) for k in keys if k in pts)
        mark = _QUALITY_MARK.get(d.get("quality", ""), "?  ")
        line = f"  [{mark}] {dev_id:<14} {d.get('nature', ''):<12} {vals}"
        if d.get("quality") == "offline" and d.get("last_error"):
            line += f"  ({d['last_error'][:60]})"
        lines.append(line)
    return "\n".join(lines)


def one_line(picture: dict[str, Any]) -> str:
    """The picture as one log line (a demo without a terminal prints this on a change)."""
    s = picture.get("summary", {})
    c = s.get("devices", {})
    flow = ", ".join(f"{label.lower()} {_fmt_value(s.get(key))}"
                     for label, key, _, _ in _FLOW if s.get(key) is not None)
    text = f"{flow} kW; devices {c.get('good', 0)} ok {c.get('stale', 0)} stale " \
           f"{c.get('offline', 0)} offline"
    if "mode" in picture:
        alarms = picture.get("alarms")
        text += f"; mode {picture['mode']}; alarms {'n/a' if alarms is None else len(alarms)}"
    return safe_text(text)
