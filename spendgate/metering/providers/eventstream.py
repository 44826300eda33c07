"""AWS event-stream framing (`application/vnd.amazon.eventstream`), decoded incrementally.

Bedrock's ConverseStream and InvokeModelWithResponseStream answer with binary frames:

    total_length u32 | headers_length u32 | prelude CRC32 u32 | headers | payload | message CRC32 u32

all big-endian; the CRCs are zlib's CRC-32 (prelude: of the first 8 bytes; message: of everything
before it). A header is name_len u8, name, type u8, value (type 7 = string: u16 length + UTF-8; the
other types have fixed or u16-prefixed sizes). Frames span network reads; memory is bounded by the
largest frame we accept. Source: AWS "Event stream encoding" (Transcribe streaming docs) and the
aws-sdk-go eventstream codec.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

PRELUDE = 12
MAX_FRAME = 16 * 1024 * 1024  # bytes; a larger length is garbage, not a frame
_FIXED = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}  # header value type -> size (6, 7: u16-prefixed)


class FrameError(ValueError):
    """Bytes that are not event-stream frames (bad length or CRC)."""


@dataclass(frozen=True, slots=True)
class Frame:
    headers: dict[str, object]
    payload: bytes

    @property
    def event_type(self) -> str | None:
        v = self.headers.get(":event-type")
        return v if isinstance(v, str) else None

    @property
    def message_type(self) -> str | None:
        v = self.headers.get(":message-type")
        return v if isinstance(v, str) else None


def parse_headers(data: bytes) -> dict[str, object]:
    """Header bytes -> {name: value}; strings decoded, others as ints/bytes/bools. Raises FrameError."""
    out: dict[str, object] = {}
    i = 0
    try:
        while i < len(data):
            n = data[i]
            name = data[i + 1:i + 1 + n].decode("utf-8")
            i += 1 + n
            kind = data[i]
            i += 1
            if kind in (6, 7):
                (size,) = struct.unpack_from(">H", data, i)
                raw = data[i + 2:i + 2 + size]
                i += 2 + size
                out[name] = raw.decode("utf-8") if kind == 7 else raw
            elif kind in _FIXED:
                size = _FIXED[kind]
                raw = data[i:i + size]
                i += size
                out[name] = kind == 0 if kind in (0, 1) else int.from_bytes(raw, "big", signed=kind != 9)
            else:
                raise FrameError(f"unknown header value type {kind}")
    except (IndexError, struct.error, UnicodeDecodeError) as e:
        raise FrameError(f"malformed headers: {e}") from None
    return out


def encode(headers: dict[str, str], payload: bytes) -> bytes:
    """One frame with string headers (what Bedrock sends); used by tests and the fake provider."""
    hb = b"".join(bytes([len(k)]) + k.encode() + b"\x07" + struct.pack(">H", len(v.encode())) + v.encode()
                  for k, v in headers.items())
    total = PRELUDE + len(hb) + len(payload) + 4
    prelude = struct.pack(">II", total, len(hb))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + hb + payload
    return body + struct.pack(">I", zlib.crc32(body))


class EventStreamDecoder:
    """Bytes in (any split), whole frames out. Raises FrameError on a corrupt stream."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        out: list[Frame] = []
        while len(self._buf) >= PRELUDE:
            total, hlen, pcrc = struct.unpack_from(">III", self._buf, 0)
            if zlib.crc32(bytes(self._buf[:8])) != pcrc:
                raise FrameError("prelude CRC mismatch")
            if total < PRELUDE + 4 + hlen or total > self._max:
                raise FrameError(f"frame length {total} out of range")
            if len(self._buf) < total:
                break
            frame = bytes(self._buf[:total])
            del self._buf[:total]
            (mcrc,) = struct.unpack_from(">I", frame, total - 4)
            if zlib.crc32(frame[:-4]) != mcrc:
                raise FrameError("message CRC mismatch")
            out.append(Frame(parse_headers(frame[PRELUDE:PRELUDE + hlen]), frame[PRELUDE + hlen:-4]))
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)
