"""The relay protocol: frames, per-stream ack/resend bookkeeping, and the I/O engine both ends share.

Standard library only: the laptop imports it (:mod:`nbcloud.ssh.resumable`) and the instance runs it beside
``nbcloud_relay.py``. A stream's bytes are numbered from 0 in each direction; each side keeps what it sent until
the other acknowledged it (cumulative acks), and after a new transport each side says how much it received
(HELLO) so the other resends exactly the rest: nothing lost, nothing twice.
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import socket
import time
from collections import deque

# isort: off
try:
    from .nbcloud_relay_wire import (
        ACK, ACK_BYTES, ACK_DELAY, BYE, CHUNK, DATA, FIN, HDR, HELLO, MAX_PAYLOAD, OPEN, PING, PONG, RST,
        SESSION_BYTES, SMALL, STREAM_WINDOW, SWEEP, Parser, ProtocolError, frame, hello,
    )
except ImportError:  # run as a script on the instance: the wire file sits beside this one
    from nbcloud_relay_wire import (  # type: ignore[no-redef]  # noqa: F401 (re-exported, as above)
        ACK, ACK_BYTES, ACK_DELAY, BYE, CHUNK, DATA, FIN, HDR, HELLO, MAX_PAYLOAD, OPEN, PING, PONG, RST,
        SESSION_BYTES, SMALL, STREAM_WINDOW, SWEEP, Parser, ProtocolError, frame, hello,
    )
# isort: on


EV_READ, EV_WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
NOT_OUT = ~select.EPOLLOUT if hasattr(select, "epoll") else 0
NOT_IN = ~select.EPOLLIN if hasattr(select, "epoll") else 0


class Stream:
    """One direction-pair's bookkeeping, no I/O. Offsets count bytes; a FIN takes one offset after the last byte,
    so ``ack > fin_out`` says the peer delivered our FIN.

    What we send is kept as the chunks our socket gave us (no copy, no joining): ``inflight`` went out on the
    current transport and waits for its ack, ``unsent`` did not go out yet; a rewind puts the first back before the
    second. What we received and the socket did not take yet waits in ``out`` (memoryviews of transport reads).
    """

    def __init__(self, sid: int, sock: socket.socket | None = None) -> None:
        self.sid, self.sock = sid, sock
        self.inflight: deque = deque()  # sent on this transport, not acknowledged: offsets [acked, sent)
        self.unsent: deque = deque()  # offsets [sent, acked + size)
        self.size = 0  # bytes in inflight + unsent
        self.acked = 0
        self.sent = 0  # offset up to which the current transport carried our bytes
        self.fin_out: int | None = None  # our socket reached EOF at this offset
        self.fin_sent = False
        self.recv = 0  # bytes received in order from the peer (+1 once its FIN came)
        self.out: deque = deque()  # received, not yet written to our socket
        self.delivered = 0  # written to our socket (+1 once we shut it for the peer's FIN)
        self.fin_in: int | None = None
        self.ack_due = False
        self.ack_sent = 0  # the last ack we sent
        self.ack_since = 0.0  # when the oldest unacked delivery happened
        self.peer_acked = 0  # the peer's cumulative ack (may pass our last byte by one: our FIN)

    @property
    def unacked(self) -> bytes:
        """Everything not acknowledged, joined (for tests and debugging; the engine never joins)."""
        return b"".join(bytes(c) for c in (*self.inflight, *self.unsent))

    def mark_delivered(self) -> None:
        if not self.ack_due:
            self.ack_due, self.ack_since = True, time.monotonic()

    def push(self, data: bytes) -> None:
        if data:
            self.unsent.append(memoryview(data))
            self.size += len(data)

    def eof(self) -> None:
        if self.fin_out is None:
            self.fin_out = self.acked + self.size

    def take(self, limit: int) -> tuple[int, memoryview] | None:
        """The next bytes to carry (offset, bytes), or None when all was sent."""
        if not self.unsent:
            return None
        chunk = self.unsent[0]
        if len(chunk) > limit:
            chunk, self.unsent[0] = chunk[:limit], chunk[limit:]
        elif len(chunk) >= SMALL or len(self.unsent) == 1 or len(self.unsent[1]) >= SMALL:
            self.unsent.popleft()
        else:
            # small pieces (a websocket's messages kept through an outage) go out joined: one frame, not hundreds
            pieces, total = [], 0
            while self.unsent and len(self.unsent[0]) < SMALL and total + len(self.unsent[0]) <= limit:
                total += len(self.unsent[0])
                pieces.append(self.unsent.popleft())
            chunk = memoryview(b"".join(pieces))
        self.inflight.append(chunk)
        self.sent += len(chunk)
        return self.sent - len(chunk), chunk

    def want_fin(self) -> bool:
        return self.fin_out is not None and not self.fin_sent and self.sent >= self.fin_out

    def on_ack(self, value: int) -> None:
        self.peer_acked = max(self.peer_acked, value)
        drop = min(value, self.acked + self.size) - self.acked
        if drop <= 0:
            return
        self.acked += drop
        self.size -= drop
        for chunks in (self.inflight, self.unsent):  # an ack from before a rewind may reach into unsent
            while drop and chunks:
                head = chunks[0]
                if len(head) <= drop:
                    chunks.popleft()
                    drop -= len(head)
                else:
                    chunks[0] = head[drop:]
                    drop = 0
        self.sent = max(self.sent, self.acked)

    def on_data(self, seq: int, payload: bytes) -> bytes:
        """The part of ``payload`` not seen before (a resend after a resume may overlap)."""
        if seq > self.recv:
            raise ProtocolError(f"stream {self.sid}: gap at {self.recv}, got {seq}")
        fresh = payload[self.recv - seq:] if seq < self.recv else payload
        self.recv += len(fresh)
        return fresh

    def on_fin(self, value: int) -> bool:
        """The peer's EOF; True the first time."""
        if self.fin_in is not None or value != self.recv:
            return False
        self.fin_in = value
        self.recv += 1
        return True

    def rewind(self, peer_recv: int) -> None:
        """A new transport: the peer has ``peer_recv``; resend from there."""
        self.on_ack(peer_recv)
        self.unsent.extendleft(reversed(self.inflight))
        self.inflight.clear()
        self.sent = self.acked
        self.fin_sent = False

    def unacked_bytes(self) -> int:
        return self.size

    def done(self) -> bool:
        return (self.fin_out is not None and self.peer_acked > self.fin_out and self.fin_in is not None
                and not self.out and self.delivered > self.fin_in)


class Reader:
    """Reads that do not cost a fresh 256 KiB buffer each: ``recv(CHUNK)`` allocates CHUNK bytes (over malloc's
    mmap threshold: mmap, then mremap to shrink and munmap to free, six syscalls and a page fault for a 60-byte
    request). Small reads go into one scratch buffer and are copied out; once a read fills a large part of it (a
    bulk transfer), the next reads of that fd allocate again, which then stays on the heap and costs no copy."""

    def __init__(self) -> None:
        self.scratch = bytearray(CHUNK)
        self.view = memoryview(self.scratch)
        self.bulk: set[int] = set()

    def read(self, fd: int, sock: socket.socket | None = None) -> bytes:
        if fd in self.bulk:
            data = sock.recv(CHUNK) if sock is not None else os.read(fd, CHUNK)
            if len(data) < SMALL:
                self.bulk.discard(fd)
            return data
        n = sock.recv_into(self.scratch) if sock is not None else os.readv(fd, (self.scratch,))
        if n >= SMALL:
            self.bulk.add(fd)
        return bytes(self.view[:n])

    def forget(self, fd: int) -> None:
        self.bulk.discard(fd)


class Loop:
    """One poller for many endpoints: one registration per fd, read and write interest merged.

    epoll directly where there is one (Linux: the instance, most laptops' CI): the ``selectors`` wrapper costs a
    few microseconds per wake-up, paid twice per hop of every request. ``selectors`` elsewhere (macOS laptops).
    """

    def __init__(self) -> None:
        self.ep = select.epoll() if hasattr(select, "epoll") else None
        self.sel = None if self.ep is not None else selectors.DefaultSelector()
        self.masks: dict[int, int] = {}
        self.handlers: dict[int, object] = {}
        self.reader = Reader()

    def watch(self, fd: int, handler: object, read: bool | None = None, write: bool | None = None) -> None:
        old = mask = self.masks.get(fd, 0)
        if read is not None:
            mask = (mask | selectors.EVENT_READ) if read else (mask & ~selectors.EVENT_READ)
        if write is not None:
            mask = (mask | selectors.EVENT_WRITE) if write else (mask & ~selectors.EVENT_WRITE)
        if handler is not None:
            self.handlers[fd] = handler
        if mask == old:
            return
        if not mask:
            self._unregister(fd)
            del self.masks[fd]
            return
        self.masks[fd] = mask
        if self.ep is not None:
            flags = (select.EPOLLIN if mask & selectors.EVENT_READ else 0) | \
                (select.EPOLLOUT if mask & selectors.EVENT_WRITE else 0)
            (self.ep.modify if old else self.ep.register)(fd, flags)
        elif old:
            self.sel.modify(fd, mask)  # type: ignore[union-attr]
        else:
            self.sel.register(fd, mask)  # type: ignore[union-attr]

    def _unregister(self, fd: int) -> None:
        if self.ep is not None:
            with contextlib.suppress(OSError):  # already closed: the kernel dropped it
                self.ep.unregister(fd)
        else:
            self.sel.unregister(fd)  # type: ignore[union-attr]

    def forget(self, fd: int) -> None:
        if self.masks.pop(fd, None) is not None:
            self._unregister(fd)
        self.handlers.pop(fd, None)
        self.reader.forget(fd)

    def run_once(self, timeout: float) -> None:
        masks, handlers = self.masks, self.handlers
        if self.ep is None:
            for key, events in self.sel.select(timeout):  # type: ignore[union-attr]
                handler = handlers.get(key.fd)
                if handler is not None and events & masks.get(key.fd, 0):
                    handler(key.fd, events & masks.get(key.fd, 0))  # type: ignore[operator]
            return
        for fd, ev in self.ep.poll(timeout, 64):  # without maxevents CPython allocates room for 1023 per call
            # as selectors does: an error or hang-up wakes both directions, then only what was asked for
            events = ((EV_READ if ev & NOT_OUT else 0) | (EV_WRITE if ev & NOT_IN else 0)) & masks.get(fd, 0)
            if events:
                handler = handlers.get(fd)
                if handler is not None:
                    handler(fd, events)  # type: ignore[operator]


class Endpoint:
    """The I/O of one end of one session: its streams over one transport at a time (which may come and go)."""

    def __init__(self, stream_window: int = STREAM_WINDOW, session_bytes: int = SESSION_BYTES,
                 loop: Loop | None = None) -> None:
        self.loop = loop or Loop()
        self.streams: dict[int, Stream] = {}
        self.stream_window, self.session_bytes = stream_window, session_bytes
        self.rfd: int | None = None
        self.wfd: int | None = None
        self.queue: deque = deque()
        self.queued = 0
        self.parser = Parser()
        self.live = False  # handshake done: streams flow
        self.last_rx = time.monotonic()
        self.by_fd: dict[int, Stream] = {}
        # after_io's sweep (acks, finished streams, the queue, pumping) runs when something asked for it; a round
        # that only carried one request or response on the fast paths skips it, but not for longer than SWEEP
        self.dirty = True
        self.last_sweep = 0.0
        self.ack_waiting = False  # some stream delivered bytes it did not acknowledge yet: poll with ACK_DELAY

    def watch(self, fd: int, handler: object, read: bool | None = None, write: bool | None = None) -> None:
        self.loop.watch(fd, handler, read, write)

    def forget(self, fd: int) -> None:
        self.loop.forget(fd)

    def next_timeout(self, timeout: float) -> float:
        return min(timeout, ACK_DELAY) if self.ack_waiting else timeout

    def poll(self, timeout: float) -> None:
        self.loop.run_once(self.next_timeout(timeout))
        self.after_io()

    # --- transport -----------------------------------------------------------------------------------------------
    def attach(self, rfd: int, wfd: int, first: bytes = b"") -> None:
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        self.rfd, self.wfd, self.parser, self.live = rfd, wfd, Parser(), False
        self.queue.clear()
        self.queued = 0
        self.last_rx = time.monotonic()
        self.watch(rfd, self.on_transport, read=True)
        if first:
            self.send(first)

    def detach(self) -> None:
        for fd in {self.rfd, self.wfd} - {None}:
            self.forget(fd)  # type: ignore[arg-type]
        self.rfd = self.wfd = None
        self.live = False
        self.queue.clear()
        self.queued = 0

    def send(self, data: bytes) -> None:
        """Queue for the transport; written at the end of this round of events (one writev, no extra wake-up)."""
        if self.wfd is None:
            return
        self.queue.append(data)
        self.queued += len(data)
        self.dirty = True

    def on_transport(self, fd: int, events: int) -> None:
        if events & selectors.EVENT_WRITE and fd == self.wfd:
            self.dirty = True
            self.flush()
        if events & selectors.EVENT_READ and fd == self.rfd:
            try:
                data = self.loop.reader.read(fd)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                return self.transport_lost("transport closed")
            self.last_rx = time.monotonic()
            try:
                frames = self.parser.feed(data)
            except ProtocolError as exc:
                return self.transport_lost(str(exc))
            for f in frames:
                if self.rfd is None:
                    break
                self.on_frame(*f)

    def flush(self) -> None:
        """Write the queue, refilling it from the streams, until the transport would block or all is sent."""
        while self.wfd is not None:
            if not self.queue:
                self.pump()
                if not self.queue:
                    break
            batch = [self.queue[i] for i in range(min(64, len(self.queue)))]
            try:
                n = os.writev(self.wfd, batch)
            except BlockingIOError:
                break
            except OSError:
                return self.transport_lost("transport write failed")
            self.queued -= n
            while n:
                head = self.queue[0]
                if n >= len(head):
                    self.queue.popleft()
                    n -= len(head)
                else:
                    self.queue[0] = memoryview(head)[n:]
                    n = 0
        if self.wfd is not None:
            self.watch(self.wfd, self.on_transport, write=bool(self.queue))

    def transport_lost(self, why: str) -> None:
        self.detach()

    # --- streams -------------------------------------------------------------------------------------------------
    def total_unacked(self) -> int:
        return sum(s.size for s in self.streams.values())

    def add_stream(self, st: Stream) -> None:
        self.streams[st.sid] = st
        self.dirty = True
        if st.sock is not None:
            st.sock.setblocking(False)
            self.by_fd[st.sock.fileno()] = st
            self.watch(st.sock.fileno(), self.on_sock, read=True)

    def sock_stream(self, fd: int) -> Stream | None:
        st = self.by_fd.get(fd)
        return st if st is not None and st.sock is not None and self.streams.get(st.sid) is st else None

    def on_sock(self, fd: int, events: int) -> None:
        st = self.sock_stream(fd)
        if st is None:
            return self.forget(fd)
        if events & selectors.EVENT_WRITE:
            self.dirty = True
            self.write_sock(st)
        if events & selectors.EVENT_READ and st.sid in self.streams:
            try:
                data = self.loop.reader.read(fd, st.sock)
            except BlockingIOError:
                return
            except OSError:
                return self.reset(st, tell=True)
            if data and self.live and not self.queue and not st.unsent and self.wfd is not None:
                # the fast path (a request, a response): one writev now, no queue, no sweep of every stream
                self.carry_now(st, data)
                if st.size < self.stream_window and (len(self.streams) == 1 or
                                                     self.total_unacked() < self.session_bytes):
                    return
            elif data:
                st.push(data)
            else:
                st.eof()
                self.watch(fd, None, read=False)
            self.dirty = True
            self.pump()

    def carry_now(self, st: Stream, data: bytes) -> None:
        """What ``push`` + ``pump`` + ``flush`` do for a stream with nothing else to send, in one writev."""
        n = len(data)
        view = memoryview(data)
        head = HDR.pack(DATA, st.sid, st.sent, n)
        st.inflight.append(view)
        st.sent += n
        st.size += n
        try:
            w = os.writev(self.wfd, (head, view))  # type: ignore[arg-type]
        except BlockingIOError:
            w = 0
        except OSError:
            return self.transport_lost("transport write failed")
        if w < len(head) + n:  # the transport is full: the rest waits in the queue
            if w < len(head):
                self.queue.append(head[w:])
                self.queue.append(view)
            else:
                self.queue.append(view[w - len(head):])
            self.queued += len(head) + n - w
            self.dirty = True
            self.watch(self.wfd, self.on_transport, write=True)  # type: ignore[arg-type]

    def write_sock(self, st: Stream) -> None:
        sock = st.sock
        self.dirty = self.ack_waiting = True
        if sock is None:
            return
        try:
            while st.out:
                head = st.out[0]
                n = sock.send(head)
                if n < len(head):
                    st.out[0] = head[n:]
                else:
                    st.out.popleft()
                st.delivered += n
                st.mark_delivered()
        except BlockingIOError:
            pass
        except OSError:
            return self.reset(st, tell=True)
        if st.fin_in is not None and not st.out and st.delivered == st.fin_in:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            st.delivered += 1
            st.mark_delivered()
        self.watch(sock.fileno(), self.on_sock, write=bool(st.out))

    def deliver(self, st: Stream, data: bytes) -> None:
        """Write what arrived for ``st``; only what the socket does not take now is buffered."""
        if not st.out and st.sock is not None and getattr(st, "connected", True):
            try:
                n = st.sock.send(data)
            except BlockingIOError:
                n = 0
            except OSError:
                return self.reset(st, tell=True)
            st.delivered += n
            st.mark_delivered()
            self.ack_waiting = True
            if n == len(data):
                if st.delivered - st.ack_sent >= ACK_BYTES:
                    self.dirty = True
                return
            data = data[n:]
        self.dirty = True
        if data:
            # a view into a transport read pins that whole read (up to CHUNK) while our socket is full: small
            # pieces are copied so a slow reader of many small frames does not hold megabytes of other streams' bytes
            st.out.append(memoryview(bytes(data)) if len(data) < SMALL else memoryview(data))
        self.write_sock(st)

    def reset(self, st: Stream, tell: bool) -> None:
        if tell:
            self.send(frame(RST, st.sid))
        self.drop(st)

    def drop(self, st: Stream) -> None:
        self.streams.pop(st.sid, None)
        self.dirty = True
        if st.sock is not None:
            if self.by_fd.get(st.sock.fileno()) is st:
                del self.by_fd[st.sock.fileno()]
            self.forget(st.sock.fileno())
            st.sock.close()
            st.sock = None

    def pump(self) -> None:
        """Carry unsent bytes while the transport keeps up; stop reading sockets whose stream is too far ahead."""
        total = self.total_unacked()
        for st in list(self.streams.values()):
            while self.live and self.queued < 4 * CHUNK:
                piece = st.take(CHUNK)
                if piece is None:
                    break
                self.send(HDR.pack(DATA, st.sid, piece[0], len(piece[1])))
                self.send(piece[1])
            if self.live and st.want_fin():
                st.fin_sent = True
                self.send(frame(FIN, st.sid, st.fin_out or 0))
            if st.sock is not None and st.fin_out is None and self.may_read(st):
                room = st.size < self.stream_window and total < self.session_bytes
                self.watch(st.sock.fileno(), self.on_sock, read=room)

    def may_read(self, st: Stream) -> bool:
        return True

    def after_io(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if not self.dirty and now - self.last_sweep < SWEEP:
            return
        self.last_sweep = now
        waiting = False
        for st in list(self.streams.values()):
            # Acks wait a little (or for 128 KiB): one per request/response would wake the other end for nothing.
            if st.ack_due and self.live and (st.delivered - st.ack_sent >= ACK_BYTES or st.fin_in is not None
                                             or now - st.ack_since >= ACK_DELAY):
                st.ack_due, st.ack_sent = False, st.delivered
                self.send(frame(ACK, st.sid, st.delivered))
            if st.done():
                self.drop(st)
            elif st.ack_due:
                waiting = True
        self.ack_waiting = waiting
        self.flush()
        self.dirty = False  # what flush could not write waits for the transport's write event, which marks it again

    def on_stream_frame(self, kind: int, sid: int, value: int, payload: bytes) -> None:
        st = self.streams.get(sid)
        if st is None:
            if kind not in (RST, ACK):
                self.send(frame(RST, sid))
            return
        if kind == DATA:
            try:
                fresh = st.on_data(value, payload)
            except ProtocolError as exc:
                return self.transport_lost(str(exc))
            if fresh:
                self.deliver(st, fresh)
            return
        self.dirty = True
        if kind == ACK:
            st.on_ack(value)
            self.pump()
        elif kind == FIN:
            if st.on_fin(value):
                self.write_sock(st)
        elif kind == RST:
            self.drop(st)

    def on_frame(self, kind: int, sid: int, value: int, payload: bytes) -> None:
        raise NotImplementedError

    def resume(self, peer: dict) -> None:
        """After the HELLOs: rewind every stream the peer has to what it received, and flow again."""
        self.live = True
        self.dirty = True
        for st in list(self.streams.values()):
            st.rewind(int(peer.get(str(st.sid), 0)))
        self.pump()

    def recv_offsets(self) -> dict:
        return {str(sid): st.recv for sid, st in self.streams.items()}
