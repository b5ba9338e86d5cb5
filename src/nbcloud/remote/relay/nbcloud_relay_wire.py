"""The relay's wire format: frame kinds, the header, and the parser of a byte stream into frames.

Standard library only; shipped beside ``nbcloud_relay_protocol.py`` (which re-exports these names).
"""

from __future__ import annotations

import json
import struct

HDR = struct.Struct("!BIQI")  # kind, stream id, value (offset / ack / clock), payload length
HELLO, OPEN, DATA, ACK, FIN, RST, PING, PONG, BYE = range(1, 10)
MAX_PAYLOAD = 1 << 20
CHUNK = 256 * 1024
STREAM_WINDOW = 8 << 20  # unacked bytes per stream before we stop reading its socket
SESSION_BYTES = 64 << 20  # unacked bytes per session (all streams) before we stop reading any socket
ACK_DELAY, ACK_BYTES = 0.04, 128 * 1024
SWEEP = 0.01  # after_io's sweep runs at least this often while rounds keep skipping it
SMALL = 16 * 1024  # kept pieces below this are joined when several wait (copying them costs less than a frame each)



class ProtocolError(Exception):
    pass


def frame(kind: int, sid: int = 0, value: int = 0, payload: bytes = b"") -> bytes:
    return HDR.pack(kind, sid, value, len(payload)) + payload


def hello(info: dict) -> bytes:
    return frame(HELLO, payload=json.dumps(info).encode())


class Parser:
    """Bytes from the transport in, frames out (kind, sid, value, payload).

    DATA payloads are not gathered: each read yields the part of a DATA frame it holds as a frame of its own
    (offset advanced), a zero-copy memoryview of the read. Offsets make the pieces equivalent to the whole, and
    nothing of a 256 KiB frame is copied or waits for its last byte. Other frames (small) are gathered whole.
    """

    def __init__(self) -> None:
        self.buf = bytearray()  # an incomplete header, or an incomplete non-DATA frame (header included)
        self.sid = self.seq = self.remaining = 0  # inside a DATA payload: its stream, next offset, bytes to come

    def feed(self, data: bytes) -> list:
        size = HDR.size
        if not self.remaining and not self.buf and len(data) > size and data[0] == DATA:
            # the common read: exactly one whole DATA frame (a request, a response)
            kind, sid, value, n = HDR.unpack_from(data, 0)
            if len(data) == size + n and n <= MAX_PAYLOAD:
                return [(DATA, sid, value, memoryview(data)[size:])]
        out: list = []
        view, pos, end = memoryview(data), 0, len(data)
        while pos < end:
            if self.remaining:
                k = min(self.remaining, end - pos)
                out.append((DATA, self.sid, self.seq, view[pos:pos + k]))
                self.seq += k
                self.remaining -= k
                pos += k
                continue
            if self.buf:  # complete what the last read left (a header, or a small frame)
                need = size - len(self.buf) if len(self.buf) < size else size + self.buf_len() - len(self.buf)
                take = min(need, end - pos)
                self.buf += view[pos:pos + take]
                pos += take
                if len(self.buf) < size:
                    continue
                head: bytes | bytearray | memoryview = self.buf
                hpos = 0
            elif end - pos >= size:
                head, hpos = view, pos
                pos += size
            else:
                self.buf += view[pos:end]
                break
            kind, sid, value, n = HDR.unpack_from(head, hpos)
            if n > MAX_PAYLOAD or not HELLO <= kind <= BYE:
                raise ProtocolError(f"bad frame kind={kind} length={n}")
            if kind == DATA:
                self.buf = bytearray()
                self.sid, self.seq, self.remaining = sid, value, n
                if not n:
                    out.append((DATA, sid, value, b""))
                continue
            if head is self.buf:  # a small frame being gathered: done once its payload is all there
                if len(self.buf) - size >= n:
                    out.append((kind, sid, value, bytes(self.buf[size:size + n])))
                    self.buf = bytearray()
                continue
            if end - pos >= n:
                out.append((kind, sid, value, bytes(view[pos:pos + n])))
                pos += n
            else:
                self.buf = bytearray(view[pos - size:end])
                pos = end
        return out

    def buf_len(self) -> int:
        """The payload length of the frame gathered in ``buf`` (its header is complete)."""
        return HDR.unpack_from(self.buf, 0)[3]
