"""Fault kinds the simulated devices can be told to show, and their parameters.

Faults are set per device and cleared at run time. ``drop`` and ``refuse`` are faults of
a link, so they act on the whole endpoint (every device behind that connection).
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from typing import Any

from pymodbus.constants import ExcCodes


class FaultKind(enum.StrEnum):
    DROP = "drop"  # close the endpoint's client connections, on every request while active
    REFUSE = "refuse"  # stop listening on the endpoint; accept again when cleared
    SLOW = "slow"  # answer after delay_ms
    TIMEOUT = "timeout"  # never answer requests for this unit
    EXCEPTION = "exception"  # answer every request for this unit with Modbus exception `code`
    STUCK = "stuck"  # registers stop updating (last values stay)
    GARBAGE = "garbage"  # response bytes after the header are replaced by random bytes


ENDPOINT_KINDS = frozenset({FaultKind.DROP, FaultKind.REFUSE})

# kind -> {param: (type, default)}; a default of None means required.
PARAMS: dict[FaultKind, dict[str, tuple[type, Any]]] = {
    FaultKind.DROP: {},
    FaultKind.REFUSE: {},
    FaultKind.SLOW: {"delay_ms": (float, 500.0)},
    FaultKind.TIMEOUT: {},
    FaultKind.EXCEPTION: {"code": (int, int(ExcCodes.DEVICE_FAILURE))},
    FaultKind.STUCK: {},
    FaultKind.GARBAGE: {"seed": (int, 0)},
}


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": str(self.kind), **self.params}


def make_fault(kind: str | FaultKind, **params: Any) -> Fault:
    """A validated fault; ValueError says what is wrong (unknown kind or parameter)."""
    try:
        k = FaultKind(kind)
    except ValueError:
        raise ValueError(f"unknown fault kind '{kind}' (known: "
                         f"{', '.join(k.value for k in FaultKind)})") from None
    spec = PARAMS[k]
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise ValueError(f"fault '{k}' takes no parameter {', '.join(unknown)} "
                         f"(known: {', '.join(spec) or 'none'})")
    out: dict[str, Any] = {}
    for name, (typ, default) in spec.items():
        raw = params.get(name, default)
        try:
            value = typ(raw)
        except (TypeError, ValueError):
            raise ValueError(f"fault '{k}': {name} must be a {typ.__name__} "
                             f"(found {raw!r})") from None
        out[name] = value
    if k is FaultKind.SLOW and not 0 <= out["delay_ms"] <= 600_000:
        raise ValueError(f"fault 'slow': delay_ms must be 0..600000 (found {out['delay_ms']})")
    if k is FaultKind.EXCEPTION:
        try:
            ExcCodes(out["code"])
        except ValueError:
            raise ValueError(f"fault 'exception': code {out['code']} is not a Modbus exception "
                             f"code (known: {', '.join(str(int(c)) for c in ExcCodes)})"
                             ) from None
    return Fault(k, out)


def corrupt(frame: bytes, keep: int, rng: random.Random) -> bytes:
    """``frame`` with every byte after the first ``keep`` replaced by random bytes.

    The header (MBAP with its length, or the RTU unit id) stays, so the client gets a
    frame of the right size for the right request that does not make sense.
    """
    body = bytes(rng.getrandbits(8) for _ in range(len(frame) - keep))
    if body and keep:
        # Never a valid function code or exception reply: 0x00 is no Modbus function.
        body = b"\x00" + body[1:]
    return frame[:keep] + body
