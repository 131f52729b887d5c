"""``strategy_set`` on the API: an operator's settings laid over the strategies' sections,
what changed, and the model's refusals in words (gateway/control/api_commands.py)."""

from __future__ import annotations

from typing import Any

from pydantic_core import ErrorDetails

from gateway.config.suggest import unknown_name
from gateway.control.config import Strategies


def merge_settings(current: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The strategies' sections with an operator's settings laid over them: a bool sets a
    section's switch, a mapping some of its fields, ``name.field`` one field. What does not
    fit (an unknown or moved name, a wrong type) is passed on for the model to refuse."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in current.items()}
    for name, value in settings.items():
        section, dot, fieldname = str(name).partition(".")
        now = out.get(section)
        if dot and isinstance(now, dict):
            now[fieldname] = value
        elif isinstance(now, dict) and isinstance(value, bool):
            now["enabled"] = value
        elif isinstance(now, dict) and isinstance(value, dict):
            now.update(value)
        else:
            out[str(name)] = value
    return out


def changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``{"section.field": {"from": old, "to": new}}`` for every field that changed."""
    out: dict[str, Any] = {}
    for section, fields in after.items():
        for key, new in fields.items():
            old = before.get(section, {}).get(key)
            if old != new:
                out[f"{section}.{key}"] = {"from": old, "to": new}
    return out


def setting_error(e: ErrorDetails) -> str:
    """One of the model's errors as the operator reads it (no file here, only names)."""
    loc = [str(x) for x in e["loc"]]
    if e["type"] == "extra_forbidden" and len(loc) == 1:
        return unknown_name("strategy", loc[0], Strategies.model_fields)
    if e["type"] == "extra_forbidden":
        section = Strategies.model_fields.get(loc[0])
        known = getattr(section.annotation, "model_fields", {}) if section else {}
        return f"{loc[0]}: " + unknown_name("parameter", loc[-1], known)
    return f"{'.'.join(loc)}: {e['msg']}"
