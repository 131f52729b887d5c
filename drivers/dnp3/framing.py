"""A link-layer frame parser that says what it threw away.

dnp3py's FrameParser drops a frame whose header or data-block CRC (CRC-16/DNP over each
16-byte block, IEEE 1815-2012 9.2.5) is wrong and hunts for the next start bytes, silently:
the master then only sees "no answer". This one does the same resynchronisation but counts
each dropped frame as a bad CRC or, when the next frame's header starts inside the span
the dropped one claimed, as a truncated frame, so the link can name the fault.
"""

from __future__ import annotations

from dnp3.core.crc import compute_crc
from dnp3.datalink.frame import (
    DATA_BLOCK_SIZE,
    HEADER_SIZE,
    HEADER_SIZE_NO_CRC,
    LENGTH_FIELD_OVERHEAD,
    DataLinkFrame,
    DataLinkHeader,
)
from dnp3.datalink.parser import FrameParser

START = b"\x05\x64"


def frame_size(user_data_length: int) -> int:
    """Bytes on the wire of a frame carrying ``user_data_length`` bytes (CRCs included)."""
    full, rest = divmod(user_data_length, DATA_BLOCK_SIZE)
    return HEADER_SIZE + full * (DATA_BLOCK_SIZE + 2) + (rest + 2 if rest else 0)


def _header_ok(buf: bytes | bytearray, at: int = 0) -> bool:
    head = bytes(buf[at:at + HEADER_SIZE])
    if len(head) < HEADER_SIZE or head[:2] != START:
        return False
    crc = int.from_bytes(head[HEADER_SIZE_NO_CRC:HEADER_SIZE], "little")
    return compute_crc(head[:HEADER_SIZE_NO_CRC]) == crc and head[2] >= LENGTH_FIELD_OVERHEAD


def _user_data(blocks: bytes, length: int) -> bytes | None:
    """The user data of a frame's data blocks, or None when a block's CRC is wrong."""
    out = bytearray()
    pos = 0
    while len(out) < length:
        size = min(length - len(out), DATA_BLOCK_SIZE)
        block, crc = blocks[pos:pos + size], blocks[pos + size:pos + size + 2]
        if compute_crc(block) != int.from_bytes(crc, "little"):
            return None
        out += block
        pos += size + 2
    return bytes(out)


class CountingFrameParser(FrameParser):
    """FrameParser that counts frames dropped for a bad CRC or for being cut short."""

    def __init__(self) -> None:
        super().__init__()
        self.bad_crc = 0
        self.truncated = 0
        self._resyncing = False  # inside the bytes of a header that failed its CRC

    @property
    def partial_frame(self) -> bool:
        """A frame with a good header is buffered but its end has not arrived (so far)."""
        return _header_ok(self._buffer)

    def reset(self) -> None:
        super().reset()
        self._resyncing = False

    def _cut(self, end: int) -> int | None:
        """Where a good header starts inside the first ``end`` bytes (after ours)."""
        buf = self._buffer
        pos = buf.find(START, HEADER_SIZE, end)
        while pos >= 0:
            if _header_ok(buf, pos):
                return pos
            pos = buf.find(START, pos + 1, end)
        return None

    def _try_parse_frame(self) -> DataLinkFrame | None:
        buf = self._buffer
        while True:
            start = buf.find(START)
            if start < 0:
                # keep a trailing 0x05: it may be the first start byte of the next read
                del buf[:-1 if buf[-1:] == b"\x05" else len(buf)]
                return None
            del buf[:start]
            if len(buf) < HEADER_SIZE:
                return None
            if not _header_ok(buf):
                if not self._resyncing:  # one count per damaged header, not per byte
                    self.bad_crc += 1
                    self._resyncing = True
                del buf[0]
                continue
            self._resyncing = False
            header = DataLinkHeader.from_bytes(bytes(buf[:HEADER_SIZE_NO_CRC]))
            size = frame_size(header.user_data_length)
            if len(buf) >= size:
                data = _user_data(bytes(buf[HEADER_SIZE:size]), header.user_data_length)
                if data is not None:
                    del buf[:size]
                    return DataLinkFrame(header=header, user_data=data)
                cut = self._cut(size)
                if cut is None:
                    self.bad_crc += 1
                    del buf[:size]  # the header's CRC held, so its length is right
                else:
                    self.truncated += 1
                    del buf[:cut]
                continue
            cut = self._cut(len(buf))
            if cut is None:
                return None  # the rest has not arrived yet
            self.truncated += 1  # the next frame began before this one ended
            del buf[:cut]
