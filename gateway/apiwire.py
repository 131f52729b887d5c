"""The API's wire format: one JSON object per line, parsed and encoded defensively.

Whatever a client sends (invalid UTF-8, NaN, 10,000 nested brackets, a 5,000-digit id),
``parse_request`` answers with a one-line reason instead of an exception from deep inside
``json``; ``encode`` always produces valid JSON (a non-finite float becomes null, and the
reply says so) so a client's parser never chokes on ``NaN``.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_LINE = 64 * 1024  # bytes in one request line
MAX_DEPTH = 16  # nesting of arrays/objects in one request
MAX_ID_CHARS = 128


class BadRequest(Exception):
    """A request line that cannot be served; the message is the one-line reply."""


class _Refused(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number (NaN and Infinity are refused)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text[:20]} is out of range")
    return value


def parse_request(line: bytes) -> tuple[Any, dict[str, Any]]:
    """``(id, request)`` from one line; raise BadRequest with the reason.

    The id is returned even when the rest is refused, so the error reply can carry it."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the request is not valid UTF-8 (at byte offset {exc.start})") from None
    try:
        req = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _Refused as exc:
        raise BadRequest(f"not valid JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise BadRequest(f"the request is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # e.g. an integer with more than 4300 digits
        raise BadRequest(f"not valid JSON: {str(exc).split(';')[0]}") from None
    if not isinstance(req, dict):
        raise BadRequest("a request is a JSON object like {\"cmd\": \"ping\"}")
    if _depth(req) > MAX_DEPTH:
        raise BadRequest(f"the request is nested deeper than {MAX_DEPTH} levels")
    req_id = req.get("id")
    if not _valid_id(req_id):
        raise BadRequest(f"'id' must be an integer or a string of at most {MAX_ID_CHARS} "
                         f"characters")
    return req_id, req


def _valid_id(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) < 2**63
    return isinstance(value, str) and len(value) <= MAX_ID_CHARS


def _depth(obj: Any) -> int:
    """Nesting depth of a parsed request, without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                return level
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, level + 1) for c in children)
    return deepest


def encode(msg: dict[str, Any]) -> bytes:
    """One line of valid JSON; non-finite floats become null with a ``warning`` saying so."""
    try:
        text = json.dumps(msg, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:
        replaced = [0]
        try:
            clean = _finite(msg, replaced, 0)
            clean["warning"] = (f"{replaced[0]} non-finite number(s) (NaN/Infinity) "
                                f"replaced by null")
            text = json.dumps(clean, separators=(",", ":"), allow_nan=False, default=str)
        except (ValueError, RecursionError) as exc:
            text = json.dumps({"id": msg.get("id") if _valid_id(msg.get("id")) else None,
                               "ok": False, "error": f"internal error: the reply could not "
                                                     f"be encoded ({exc})"})
    return text.encode() + b"\n"


def _finite(obj: Any, replaced: list[int], level: int) -> Any:
    if level > 200:
        raise ValueError("the reply is nested too deeply")
    if isinstance(obj, float) and not math.isfinite(obj):
        replaced[0] += 1
        return None
    if isinstance(obj, dict):
        return {k: _finite(v, replaced, level + 1) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v, replaced, level + 1) for v in obj]
    return obj
