"""What a master owes its outstation when the outstation's IIN bits ask for it.

IEEE 1815-2012 4.5 and 5.1: DEVICE_RESTART (IIN1.7) -> integrity poll, then clear the
bit (WRITE g80v1 index 7 = 0, or the outstation reports the restart forever);
NEED_TIME (IIN1.4) -> time synchronisation (LAN: RECORD_CURRENT_TIME + WRITE g50v3,
10.3.3.2; non-LAN: DELAY_MEASURE + WRITE g50v1, 10.3.3.1); EVENT_BUFFER_OVERFLOW
(IIN2.3) -> integrity poll (events were lost, the static values are the truth).

Each bit is handled once per episode, from the first response that carries it to the
first response without it: one log line, one count, one round of requests. This module
decides and builds the requests; the link runs them on its open association.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from dnp3.application.fragment import ObjectBlock, RequestFragment
from dnp3.application.header import RequestHeader
from dnp3.application.qualifiers import ObjectHeader
from dnp3.core.enums import FunctionCode
from dnp3.core.flags import IIN

log = logging.getLogger("drivers.dnp3")

IIN_REFUSED = IIN.NO_FUNC_CODE_SUPPORT | IIN.OBJECT_UNKNOWN | IIN.PARAMETER_ERROR
QUALIFIER_START_STOP_8 = 0x00  # g80v1 WRITE (IEEE 1815-2012 Tables 14-2..14-4)
QUALIFIER_COUNT_8 = 0x07  # g50v1 / g50v3 WRITE, count 1 (A.23.1.2.3, A.23.3)
RESTART_BIT_INDEX = 7  # IIN1.7 as a g80v1 index


class Action(enum.Enum):
    """A housekeeping request round, in the order they run."""

    INTEGRITY = "integrity poll"
    CLEAR_RESTART = "clear DEVICE_RESTART"
    TIME_SYNC = "time synchronisation"


@dataclass(frozen=True)
class _Bit:
    flag: IIN
    counter: str  # IOStats.extra key
    what: str  # for the log line
    actions: tuple[Action, ...]


BITS = (
    _Bit(IIN.DEVICE_RESTART, "restarts", "restarted (IIN1.7 DEVICE_RESTART)",
         (Action.INTEGRITY, Action.CLEAR_RESTART)),
    _Bit(IIN.NEED_TIME, "time_requests", "asks for the time (IIN1.4 NEED_TIME)",
         (Action.TIME_SYNC,)),
    _Bit(IIN.EVENT_BUFFER_OVERFLOW, "event_overflows",
         "lost events (IIN2.3 EVENT_BUFFER_OVERFLOW)", (Action.INTEGRITY,)),
)


@dataclass
class Housekeeping:
    """Episodes of the IIN bits that ask the master to act, and the actions owed."""

    name: str  # "127.0.0.1:20000 (outstation 10)", for log lines
    time_sync: str = "lan"  # "lan", "non_lan" or "off"
    counts: dict[str, int] = field(default_factory=lambda: {
        "restarts": 0, "time_requests": 0, "event_overflows": 0, "restart_clears": 0,
        "time_syncs": 0, "housekeeping_refused": 0})
    pending: list[Action] = field(default_factory=list)
    _active: set[IIN] = field(default_factory=set)

    def observe(self, iins: Sequence[int], *, integrity: bool = False) -> None:
        """Take the IIN of every response of one exchange (``integrity``: it was an
        integrity poll, which already is the poll a restart or an overflow asks for)."""
        if not iins:
            return
        for bit in BITS:
            if any(i & bit.flag for i in iins) and bit.flag not in self._active:
                self._active.add(bit.flag)
                self.counts[bit.counter] += 1
                owed = [a for a in bit.actions if not (integrity and a is Action.INTEGRITY)]
                if bit.flag is IIN.NEED_TIME and self.time_sync == "off":
                    owed = []
                log.warning("%s %s; %s", self.name, bit.what, _plan(bit, owed))
                for a in owed:
                    if a not in self.pending:
                        self.pending.append(a)
            if not iins[-1] & bit.flag:
                self._active.discard(bit.flag)  # the episode is over
        self.pending.sort(key=list(Action).index)

    def take(self) -> Action | None:
        """The next action owed, removed from the list."""
        return self.pending.pop(0) if self.pending else None

    def refused(self, action: Action, iin: int) -> None:
        """The outstation answered a housekeeping request with an IIN2 error."""
        self.counts["housekeeping_refused"] += 1
        log.warning("%s refused the %s: %s", self.name, action.value,
                    iin_names(iin & IIN_REFUSED))

    def forget(self) -> None:
        """A new connection: every bit is news again, nothing is owed on the old one."""
        self._active.clear()
        self.pending.clear()


def iin_names(iin: int) -> str:
    """IIN bits by name, e.g. "NO_FUNC_CODE_SUPPORT|PARAMETER_ERROR"."""
    return "|".join(f.name or "" for f in IIN if f & iin) or "none"


def _plan(bit: _Bit, owed: Sequence[Action]) -> str:
    if owed:
        return "doing: " + " then ".join(a.value for a in owed)
    if bit.flag is IIN.NEED_TIME:
        return "time synchronisation is off for this connection"
    return "the integrity poll that reported it already read every value"


def _request(function: FunctionCode, seq: int, *blocks: ObjectBlock) -> RequestFragment:
    return RequestFragment(header=RequestHeader.build(function=function, seq=seq),
                           objects=tuple(blocks))


def clear_restart_request(seq: int) -> RequestFragment:
    """WRITE g80v1, qualifier 0x00, index 7..7 = 0: clear IIN1.7."""
    block = ObjectBlock(ObjectHeader(group=80, variation=1, qualifier=QUALIFIER_START_STOP_8),
                        bytes([RESTART_BIT_INDEX, RESTART_BIT_INDEX, 0x00]))
    return _request(FunctionCode.WRITE, seq, block)


def record_current_time_request(seq: int) -> RequestFragment:
    """RECORD_CURRENT_TIME (FC 24): the outstation notes when it received this."""
    return _request(FunctionCode.RECORD_CURRENT_TIME, seq)


def delay_measure_request(seq: int) -> RequestFragment:
    """DELAY_MEASURE (FC 23): the outstation answers its own processing time (g52)."""
    return _request(FunctionCode.DELAY_MEASURE, seq)


def write_time_request(seq: int, ms: int, variation: int) -> RequestFragment:
    """WRITE g50v1 (absolute time) or g50v3 (time at the last RECORD_CURRENT_TIME)."""
    block = ObjectBlock(ObjectHeader(group=50, variation=variation, qualifier=QUALIFIER_COUNT_8),
                        bytes([1]) + (ms & (2**48 - 1)).to_bytes(6, "little"))
    return _request(FunctionCode.WRITE, seq, block)


def outstation_delay_ms(blocks: Sequence[ObjectBlock]) -> int | None:
    """The processing delay a DELAY_MEASURE response reports (g52v1 s, g52v2 ms)."""
    for block in blocks:
        h = block.header
        if h.group == 52 and h.variation in (1, 2) and h.qualifier == QUALIFIER_COUNT_8 \
                and len(block.data) >= 3 and block.data[0] >= 1:
            value = int.from_bytes(block.data[1:3], "little")
            return value * 1000 if h.variation == 1 else value
    return None
