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
    """A copy of a JSON-like answer with every string (keys too) made safe to print."""
    if isinstance(obj, str):
        return safe_text(obj)
    if isinstance(obj, dict):
        return {safe_text(k) if isinstance(k, str) else k: sanitized(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
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


def _fmt_point(name: str, p: dict[str, Any]) -> str:
    unit = p.get("unit") or ""
    return f"{name}={_fmt_value(p.get('value'))}{' ' + unit if unit else ''}"


# The points worth one glance per nature, in the demo's device table.
_KEY_POINTS = {
    "pv_inverter": ["p_kw", "p_limit_pct", "state"],
    "wind_turbine": ["p_kw", "wind_speed_ms", "state"],
    "bess": ["p_kw", "soc_pct", "cell_temp_max_c"],
    "bms": ["soc_pct", "i_pack_a", "cell_temp_max_c"],
    "evse": ["p_kw", "state", "ev_soc_pct"],
    "meter": ["p_kw", "v_v", "f_hz"],
    "breaker": ["closed", "i_a"],
    "load": ["p_kw", "enabled"],
}


def render(snapshot: dict[str, Any], title: str = "AutoGrid", now: float | None = None) -> str:
    """The snapshot (from SiteState.snapshot or the API) as an operator-readable page."""
    now = time.time() if now is None else now
    snapshot = sanitized(snapshot)
    s = snapshot["summary"]
    lines = [f"{title} — {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))}", "",
             "Power flow"]
    for label, key, pos, neg in _FLOW:
        if key == "wind_kw" and s.get(key) is None:
            continue
        lines.append(f"  {label:<12}{_kw(s.get(key))}  {_direction(s.get(key), pos, neg)}")
    soc = s.get("battery_soc_pct")
    if isinstance(soc, int | float):
        lines.append(f"  {'Battery SOC':<12}{soc:8.1f} %")
    counts = s.get("devices", {})
    lines += ["", f"Devices  {counts.get('good', 0)} ok, {counts.get('stale', 0)} stale, "
                  f"{counts.get('offline', 0)} offline"]
    for dev_id, d in sorted(snapshot.get("devices", {}).items()):
        pts = d.get("points", {})
        keys = _KEY_POINTS.get(d.get("nature", ""), [])
        vals = "  ".join(_fmt_point(k, pts[k]) for k in keys if k in pts)
        mark = _QUALITY_MARK.get(d.get("quality", ""), "?  ")
        line = f"  [{mark}] {dev_id:<14} {d.get('nature', ''):<12} {vals}"
        if d.get("quality") == "offline" and d.get("last_error"):
            line += f"  ({d['last_error'][:60]})"
        lines.append(line)
    return "\n".join(lines)
