"""Server websocket frames (RFC 6455, RFC 7692), each built once and shared by every socket it goes to."""
from __future__ import annotations

import zlib

DEFLATE_MAX_WBITS = 15
# A close frame without a status, as eventlet's websocket sends when its handler returns.
CLOSE_FRAME = b"\x88\x00"


class SharedFrames:
    """One Engine.IO message as websocket frames, each variant built once on first use.

    A text message (str) goes as a text frame, a binary one (bytes) as a binary frame; deflated
    without context takeover, so one compressed frame is valid for every such socket.
    """

    __slots__ = ("_data", "_opcode", "_plain", "_deflated")

    def __init__(self, message: str | bytes):
        if isinstance(message, str):
            self._data, self._opcode = message.encode(), 0x1
        else:
            self._data, self._opcode = bytes(message), 0x2
        self._plain: bytes | None = None
        self._deflated: dict[int, bytes] | None = None

    def plain(self) -> bytes:
        if self._plain is None:
            self._plain = frame(0x80 | self._opcode, self._data)
        return self._plain

    def deflated(self, wbits: int) -> bytes:
        """Return the frame compressed without context takeover, valid for any such socket."""
        if not self._data:
            return self.plain()  # nothing to compress (eventlet sends these plain too)
        if self._deflated is None:
            self._deflated = {}
        built = self._deflated.get(wbits)
        if built is None:
            compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -wbits)
            body = compressor.compress(self._data) + compressor.flush(zlib.Z_SYNC_FLUSH)
            # RFC 7692 7.2.1: the trailing 00 00 ff ff is dropped; RSV1 marks the message compressed.
            built = self._deflated[wbits] = frame(0xC0 | self._opcode, body[:-4])
        return built

    def for_window(self, wbits: int | None) -> bytes:
        """The plain frame (wbits None: no permessage-deflate) or the one deflated for that window."""
        return self.plain() if wbits is None else self.deflated(wbits)


def frame(first_byte: int, payload: bytes) -> bytes:
    """Return an unmasked server frame (RFC 6455 5.2)."""
    length = len(payload)
    if length < 126:
        header = bytes((first_byte, length))
    elif length < 65536:
        header = bytes((first_byte, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((first_byte, 127)) + length.to_bytes(8, "big")
    return header + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """Return a close frame with a status code (RFC 6455 5.5.1; the reason is cut to fit 125 bytes)."""
    return frame(0x88, code.to_bytes(2, "big") + reason.encode()[:123])


def unmask(payload: bytes, key: bytes) -> bytes:
    """Return a client frame's payload XOR its 4-byte masking key (RFC 6455 5.3)."""
    length = len(payload)
    if not length:
        return payload
    mask = (key * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(mask, "little")).to_bytes(length, "little")
