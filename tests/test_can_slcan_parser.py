"""The bulk slcan reader's parser (drivers.can.slcan): frames split across reads, adapter
spellings (lowercase hex, timestamps, BEL replies), unknown ids counted per id without
being parsed, lines that lie about their DLC counted as malformed."""

from __future__ import annotations

from drivers.can.link import EXTENDED
from drivers.can.slcan import SlcanParser, frame_prefixes, prefix_id

ACCEPT = frame_prefixes([0x355, 0x18FF50E5 | EXTENDED], EXTENDED)


def test_a_frame_split_across_reads_is_delivered_once_whole() -> None:
    p = SlcanParser()
    stream = b"t355432006400\rT18FF50E5200FF\rt7FF0\r"
    got = []
    for i in range(0, len(stream), 3):  # the adapter's bytes arrive in small pieces
        got += p.feed(stream[i:i + 3], ACCEPT)
    assert got == [(0x355, bytes.fromhex("32006400")),
                   (0x18FF50E5 | EXTENDED, b"\x00\xff")]
    assert p.frames == 3 and p.malformed == 0
    assert p.dropped_by_id(EXTENDED) == {0x7FF: 1}


def test_adapter_spellings_are_read() -> None:
    p = SlcanParser()
    got = p.feed(b"\r\a" b"z\r" b"t35543200640\r"  # OK, BEL, send ack, 4 bytes of data...
                 b"t3552aabbC0DE\r"  # lowercase hex and a 4-digit adapter timestamp
                 b"T18ff50e50\r", ACCEPT)  # lowercase extended id, DLC 0
    assert got == [(0x355, b"\xaa\xbb"), (0x18FF50E5 | EXTENDED, b"")]
    assert p.malformed == 1  # "t3554 3200640": 7 hex digits for DLC 4


def test_unknown_ids_are_counted_per_id_and_garbage_is_malformed() -> None:
    p = SlcanParser()
    flood = b"".join(b"t%03X8%s\r" % (i, b"00" * 8) for i in (0x100, 0x200) for _ in range(5))
    assert p.feed(flood + b"T0000ABCD1FF\r" + b"tXYZ1\r" + b"\x00junk\r" + b"T2FFFFFFF0\r",
                  ACCEPT) == []
    assert p.dropped_by_id(EXTENDED) == {0x100: 5, 0x200: 5, 0xABCD | EXTENDED: 1}
    assert p.malformed == 3  # a non-hex id, a line that is no frame, an id over 29 bits
    assert p.frames == 11


def test_a_line_without_end_is_dropped_not_grown() -> None:
    p = SlcanParser()
    assert p.feed(b"t355" + b"A" * 200, ACCEPT) == []
    assert p.malformed == 1
    assert p.feed(b"\rt355432006400\r", ACCEPT) == [(0x355, bytes.fromhex("32006400"))]


def test_prefixes() -> None:
    assert prefix_id(b"t7FF") == 0x7FF and prefix_id(b"t800") is None
    assert prefix_id(b"T1FFFFFFF") == 0x1FFFFFFF and prefix_id(b"T20000000") is None
    assert prefix_id(b"t35") is None and prefix_id(b"x355") is None
    assert frame_prefixes([0x35A], EXTENDED) == {b"t35A": 0x35A, b"t35a": 0x35A}


def test_a_restart_forgets_the_partial_line_and_keeps_the_counters() -> None:
    p = SlcanParser()
    assert p.feed(b"t7FF0\rt3554320", ACCEPT) == []  # the port went away mid-frame
    p.restart()
    assert p.feed(b"064\rt355432006400\r", ACCEPT) == [(0x355, bytes.fromhex("32006400"))]
    assert p.malformed == 1  # "064" alone is no frame; never glued to the old half
    assert p.dropped_by_id(EXTENDED) == {0x7FF: 1} and p.frames == 2
