"""The device-side history checker must be able to fail: crafted store histories and
device journals with a double writer, a stale-term write, a write before any ownership
record, a late write by a holder whose lease ended, a write from an unknown address and
a value never committed are each rejected, naming what they found; the clean variants
pass."""

from __future__ import annotations

from typing import Any

import pytest

from sim_devices.journal import WriteRecord
from tests.cluster_history import Event, check_device_writes

PEERS = {"gw-a": "127.0.0.2", "gw-b": "127.0.0.3", "gw-c": "127.0.0.4"}
CONFIGURED = {"ev": "gw-b", "bat": "gw-a"}
GRACE = 2.0


class History:
    """A store history in revision order: leader terms, setpoints, ownership records."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.term = 0

    def _add(self, key: str, value: dict[str, Any] | None, create: int | None = None) -> int:
        rev = len(self.events) + 2
        self.events.append(Event(rev, key, value, rev if create is None else create))
        return rev

    def lead(self, gw: str, at: float) -> None:
        self.term = self._add("leader", {"gateway": gw, "since": at})
        self.leader = gw

    def setpoint(self, dev: str, at: float, **points: Any) -> None:
        self._add(f"setpoints/{dev}", {"points": points, "writer": self.leader,
                                       "term": self.term, "at": at})

    def owner(self, dev: str, gw: str, at: float, why: str) -> None:
        self._add(f"owners/{dev}", {"gateway": gw, "since": at, "why": why,
                                    "term": self.term, "writer": self.leader})


def w(gw: str, dev: str, at: float, **points: Any) -> WriteRecord:
    return WriteRecord(at, dev, 3, "h", 0, [0], points, (PEERS.get(gw, gw), 40000), True)


def check(h: History, rows: list[WriteRecord]) -> Any:
    return check_device_writes(h.events, rows, PEERS, CONFIGURED, grace_s=GRACE)


def two_terms() -> History:
    """gw-c leads term 1 (ev: 5 kW at 10.0, 6 kW at 11.0), gw-a term 2 (ev: 2 kW at 20.0)."""
    h = History()
    h.lead("gw-c", 9.0)
    h.setpoint("ev", 10.0, p_set_kw=5.0)
    h.setpoint("ev", 11.0, p_set_kw=6.0)
    h.lead("gw-a", 19.0)
    h.setpoint("ev", 20.0, p_set_kw=2.0)
    return h


def test_clean_writes_pass_with_their_lag() -> None:
    got = check(two_terms(), [w("gw-b", "ev", 10.05, p_set_kw=5.0),
                              w("gw-b", "ev", 11.2, p_set_kw=5.9996),  # float32/scale
                              w("gw-b", "ev", 20.5, p_set_kw=6.0),  # lags the new term 0.5 s
                              w("gw-b", "ev", 20.6, p_set_kw=2.0)])
    assert got.writes == {"gw-b": 4} and got.max_lag_s == pytest.approx(0.5)
    assert got.terms == {2: 3, 5: 1}  # the values of term 2 (gw-c) and of term 5 (gw-a)


def test_a_stale_term_write_is_rejected() -> None:
    with pytest.raises(AssertionError, match=r"p_set_kw=6.0 of term 2 .* superseded 3.000 s "
                                             r"before by 2.0 of term 5 .*stale-term write"):
        check(two_terms(), [w("gw-b", "ev", 23.0, p_set_kw=6.0)])


def test_a_value_never_committed_or_written_before_its_commit_is_rejected() -> None:
    with pytest.raises(AssertionError, match=r"p_set_kw=4\.0 was never committed for ev"):
        check(two_terms(), [w("gw-b", "ev", 12.0, p_set_kw=4.0)])
    with pytest.raises(AssertionError, match=r"p_set_kw=6\.0 was never committed"):
        check(two_terms(), [w("gw-b", "ev", 10.5, p_set_kw=6.0)])  # before its commit


def test_a_second_writer_of_a_device_that_never_moved_is_rejected() -> None:
    with pytest.raises(AssertionError, match="by gw-a; ev belongs to gw-b and was never moved"):
        check(two_terms(), [w("gw-b", "ev", 10.1, p_set_kw=5.0),
                            w("gw-a", "ev", 10.2, p_set_kw=5.0)])


def test_a_write_from_an_unknown_address_is_rejected() -> None:
    with pytest.raises(AssertionError, match=r"came from \('127.0.0.9', 40000\): no gateway"):
        check(two_terms(), [w("127.0.0.9", "ev", 10.1, p_set_kw=5.0)])


def takeover() -> History:
    """bat: gw-a from 10.0; gw-a's lease ends, gw-b from 15.0; handback to gw-a at 30.0."""
    h = History()
    h.lead("gw-c", 9.0)
    h.owner("bat", "gw-a", 10.0, "configured owner")
    h.setpoint("bat", 10.5, p_set_kw=3.0)
    h.owner("bat", "gw-b", 15.0, "gw-a's lease ended")
    h.setpoint("bat", 15.5, p_set_kw=4.0)
    h.owner("bat", "gw-a", 30.0, "handback: gw-a live for 3 s")
    h.setpoint("bat", 30.5, p_set_kw=1.0)
    return h


def test_takeover_writes_by_each_holder_in_turn_pass() -> None:
    got = check(takeover(), [w("gw-a", "bat", 11.0, p_set_kw=3.0),
                             w("gw-b", "bat", 16.0, p_set_kw=4.0),
                             w("gw-b", "bat", 30.2, p_set_kw=4.0),  # before it saw the move
                             w("gw-a", "bat", 30.6, p_set_kw=1.0)])
    assert got.writes == {"gw-a": 2, "gw-b": 2} and got.tails == 1


def test_an_overlapping_double_write_is_rejected() -> None:
    # gw-b took over at 15.0; gw-a (whose lease ended) writes the battery again at 16.2
    with pytest.raises(AssertionError, match=r"by gw-a 1.200 s after bat moved to gw-b "
                                             r"because gw-a's lease ended"):
        check(takeover(), [w("gw-a", "bat", 11.0, p_set_kw=3.0),
                           w("gw-b", "bat", 16.0, p_set_kw=4.0),
                           w("gw-a", "bat", 16.2, p_set_kw=4.0)])
    # at a live hand-over the old holder's writes end before the new holder's begin
    with pytest.raises(AssertionError, match="gw-a had written it already"):
        check(takeover(), [w("gw-a", "bat", 30.6, p_set_kw=1.0),
                           w("gw-b", "bat", 30.7, p_set_kw=4.0)])
    # ... and within the grace
    with pytest.raises(AssertionError, match=r"by gw-b 2.500 s after bat moved to gw-a"):
        check(takeover(), [w("gw-b", "bat", 32.5, p_set_kw=4.0)])
    # a gateway never named may not write at all
    with pytest.raises(AssertionError, match="by gw-c; the record then named gw-b"):
        check(takeover(), [w("gw-c", "bat", 16.0, p_set_kw=4.0)])


def test_a_write_before_the_first_ownership_record_is_rejected() -> None:
    h = takeover()
    h.setpoint("bat", 5.0, p_set_kw=3.0)  # committed, but gw-a may not write yet
    with pytest.raises(AssertionError, match="by gw-a before any ownership record of bat"):
        check(h, [w("gw-a", "bat", 9.5, p_set_kw=3.0)])
