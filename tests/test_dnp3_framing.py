"""The frame parser that counts what it drops: whole frames in any chunking count
nothing, a bad CRC or a frame cut short counts once and the next frame still parses."""

from __future__ import annotations

from dnp3.datalink.builder import build_unconfirmed_user_data

from drivers.dnp3.framing import CountingFrameParser


def _frame(n: int, size: int = 60) -> bytes:
    data = bytes((n + i) % 251 for i in range(size))  # spans several 16-byte CRC blocks
    return build_unconfirmed_user_data(destination=1, source=10, dir_from_master=False,
                                       user_data=data).to_bytes()


def _feed(parser: CountingFrameParser, stream: bytes, chunk: int) -> list[bytes]:
    out = []
    for i in range(0, len(stream), chunk):
        out += [f.user_data for f in parser.feed(stream[i:i + chunk])]
    return out


def test_whole_frames_in_any_chunking_count_nothing() -> None:
    frames = [_frame(n, size) for n, size in enumerate((1, 16, 17, 60, 250))]
    for chunk in (1, 7, 64, 4096):
        parser = CountingFrameParser()
        got = _feed(parser, b"".join(frames), chunk)
        assert len(got) == len(frames) and got[3] == bytes((3 + i) % 251 for i in range(60))
        assert (parser.bad_crc, parser.truncated) == (0, 0)
        assert not parser.partial_frame


def test_bad_crc_counts_once_and_the_next_frame_parses() -> None:
    bad = bytearray(_frame(1))
    bad[20] ^= 0x55  # a data byte: its block CRC no longer holds
    parser = CountingFrameParser()
    got = _feed(parser, bytes(bad) + _frame(2), 5)
    assert got == [bytes((2 + i) % 251 for i in range(60))]
    assert (parser.bad_crc, parser.truncated) == (1, 0)
    head = bytearray(_frame(3))
    head[3] ^= 0x01  # the header: its CRC no longer holds
    got = _feed(parser, bytes(head) + _frame(4), 3)
    assert len(got) == 1 and parser.bad_crc == 2


def test_frame_cut_short_counts_as_truncated() -> None:
    parser = CountingFrameParser()
    got = _feed(parser, _frame(1)[:30] + _frame(2), 4096)
    assert got == [bytes((2 + i) % 251 for i in range(60))]
    assert (parser.bad_crc, parser.truncated) == (0, 1)
    _feed(parser, _frame(3)[:30], 4096)  # the end never comes
    assert parser.partial_frame
