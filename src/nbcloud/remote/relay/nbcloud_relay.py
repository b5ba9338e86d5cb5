"""nbcloud relay: TCP streams that outlive the SSH link (standard library only; runs on the instance).

``attach`` is what the laptop runs over ssh: it joins its stdin/stdout to a long-lived ``daemon`` through a unix
socket (0600, in ~/.nbcloud/relay), starting the daemon when it is not running. The daemon holds the TCP
connections to Jupyter while the link is down. Both ends speak the frames below and keep every byte they sent
until the other side acknowledged it; on re-attach each side says how much it received and the other resends
the rest, so the streams resume: nothing lost, nothing twice. The laptop imports this file for the same reason.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import selectors
import socket
import struct
import sys
import time
from collections import deque

HDR = struct.Struct("!BIQI")  # kind, stream id, value (offset / ack / clock), payload length
HELLO, OPEN, DATA, ACK, FIN, RST, PING, PONG, BYE = range(1, 10)
MAX_PAYLOAD = 1 << 20
CHUNK = 256 * 1024
STREAM_WINDOW = 8 << 20  # unacked bytes per stream before we stop reading its socket
SESSION_BYTES = 64 << 20  # unacked bytes per session (all streams) before we stop reading any socket
ACK_DELAY, ACK_BYTES = 0.04, 128 * 1024


class ProtocolError(Exception):
    pass


def frame(kind: int, sid: int = 0, value: int = 0, payload: bytes = b"") -> bytes:
    return HDR.pack(kind, sid, value, len(payload)) + payload


def hello(info: dict) -> bytes:
    return frame(HELLO, payload=json.dumps(info).encode())


class Parser:
    """Bytes from the transport in, whole frames out (kind, sid, value, payload)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list:
        if self.buf:
            self.buf += data
            buf: bytes | bytearray = self.buf
        else:
            buf = data  # the common case: whole frames straight from the read, one copy per payload
        out, pos, size, end = [], 0, HDR.size, len(buf)
        with memoryview(buf) as view:
            while end - pos >= size:
                kind, sid, value, n = HDR.unpack_from(buf, pos)
                if n > MAX_PAYLOAD or not HELLO <= kind <= BYE:
                    raise ProtocolError(f"bad frame kind={kind} length={n}")
                if end - pos - size < n:
                    break
                out.append((kind, sid, value, bytes(view[pos + size:pos + size + n])))
                pos += size + n
            rest = bytes(view[pos:])
        self.buf = bytearray(rest)
        return out


class Stream:
    """One direction-pair's bookkeeping, no I/O. Offsets count bytes; a FIN takes one offset after the last byte,
    so ``ack > fin_out`` says the peer delivered our FIN."""

    def __init__(self, sid: int, sock: socket.socket | None = None) -> None:
        self.sid, self.sock = sid, sock
        self.unacked = bytearray()  # what we sent or will send, not yet acknowledged; starts at offset `acked`
        self.acked = 0
        self.sent = 0  # offset up to which the current transport carried our bytes
        self.fin_out: int | None = None  # our socket reached EOF at this offset
        self.fin_sent = False
        self.recv = 0  # bytes received in order from the peer (+1 once its FIN came)
        self.out = bytearray()  # received, not yet written to our socket
        self.delivered = 0  # written to our socket (+1 once we shut it for the peer's FIN)
        self.fin_in: int | None = None
        self.ack_due = False
        self.ack_sent = 0  # the last ack we sent
        self.ack_since = 0.0  # when the oldest unacked delivery happened
        self.peer_acked = 0  # the peer's cumulative ack (may pass our last byte by one: our FIN)

    def mark_delivered(self) -> None:
        if not self.ack_due:
            self.ack_due, self.ack_since = True, time.monotonic()

    def push(self, data: bytes) -> None:
        self.unacked += data

    def eof(self) -> None:
        if self.fin_out is None:
            self.fin_out = self.acked + len(self.unacked)

    def take(self, limit: int) -> tuple[int, bytes] | None:
        """The next bytes to carry (offset, bytes), or None when all was sent."""
        start = self.sent - self.acked
        if start >= len(self.unacked):
            return None
        with memoryview(self.unacked) as view:
            data = bytes(view[start:start + limit])
        self.sent += len(data)
        return self.sent - len(data), data

    def want_fin(self) -> bool:
        return self.fin_out is not None and not self.fin_sent and self.sent >= self.fin_out

    def on_ack(self, value: int) -> None:
        self.peer_acked = max(self.peer_acked, value)
        drop = min(value, self.acked + len(self.unacked)) - self.acked
        if drop > 0:
            del self.unacked[:drop]
            self.acked += drop
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
        self.sent = self.acked
        self.fin_sent = False

    def unacked_bytes(self) -> int:
        return len(self.unacked)

    def done(self) -> bool:
        return (self.fin_out is not None and self.peer_acked > self.fin_out and self.fin_in is not None
                and not self.out and self.delivered > self.fin_in)


class Loop:
    """One selector for many endpoints: one registration per fd, read and write interest merged."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.masks: dict[int, int] = {}
        self.handlers: dict[int, object] = {}

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
            self.sel.unregister(fd)
            del self.masks[fd]
        elif old:
            self.sel.modify(fd, mask)
            self.masks[fd] = mask
        else:
            self.sel.register(fd, mask)
            self.masks[fd] = mask

    def forget(self, fd: int) -> None:
        if self.masks.pop(fd, None) is not None:
            self.sel.unregister(fd)
        self.handlers.pop(fd, None)

    def run_once(self, timeout: float) -> None:
        for key, events in self.sel.select(timeout):
            handler = self.handlers.get(key.fd)
            if handler is not None:
                handler(key.fd, events)  # type: ignore[operator]


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

    def watch(self, fd: int, handler: object, read: bool | None = None, write: bool | None = None) -> None:
        self.loop.watch(fd, handler, read, write)

    def forget(self, fd: int) -> None:
        self.loop.forget(fd)

    def next_timeout(self, timeout: float) -> float:
        return min(timeout, ACK_DELAY) if any(st.ack_due for st in self.streams.values()) else timeout

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

    def on_transport(self, fd: int, events: int) -> None:
        if events & selectors.EVENT_WRITE and fd == self.wfd:
            self.flush()
        if events & selectors.EVENT_READ and fd == self.rfd:
            try:
                data = os.read(fd, CHUNK)
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
                    self.queue[0] = head[n:]
                    n = 0
        if self.wfd is not None:
            self.watch(self.wfd, self.on_transport, write=bool(self.queue))

    def transport_lost(self, why: str) -> None:
        self.detach()

    # --- streams -------------------------------------------------------------------------------------------------
    def total_unacked(self) -> int:
        return sum(len(s.unacked) for s in self.streams.values())

    def add_stream(self, st: Stream) -> None:
        self.streams[st.sid] = st
        if st.sock is not None:
            st.sock.setblocking(False)
            self.watch(st.sock.fileno(), self.on_sock, read=True)

    def sock_stream(self, fd: int) -> Stream | None:
        for st in self.streams.values():
            if st.sock is not None and st.sock.fileno() == fd:
                return st
        return None

    def on_sock(self, fd: int, events: int) -> None:
        st = self.sock_stream(fd)
        if st is None:
            return self.forget(fd)
        if events & selectors.EVENT_WRITE:
            self.write_sock(st)
        if events & selectors.EVENT_READ and st.sid in self.streams:
            try:
                data = st.sock.recv(CHUNK)  # type: ignore[union-attr]
            except BlockingIOError:
                return
            except OSError:
                return self.reset(st, tell=True)
            if data:
                st.push(data)
            else:
                st.eof()
                self.watch(fd, None, read=False)
            self.pump()

    def write_sock(self, st: Stream) -> None:
        sock = st.sock
        if sock is None:
            return
        try:
            while st.out:
                n = sock.send(st.out)
                del st.out[:n]
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
            data = data[n:]
        st.out += data
        self.write_sock(st)

    def reset(self, st: Stream, tell: bool) -> None:
        if tell:
            self.send(frame(RST, st.sid))
        self.drop(st)

    def drop(self, st: Stream) -> None:
        self.streams.pop(st.sid, None)
        if st.sock is not None:
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
                room = len(st.unacked) < self.stream_window and total < self.session_bytes
                self.watch(st.sock.fileno(), self.on_sock, read=room)

    def may_read(self, st: Stream) -> bool:
        return True

    def after_io(self) -> None:
        now = time.monotonic()
        for st in list(self.streams.values()):
            # Acks wait a little (or for 128 KiB): one per request/response would wake the other end for nothing.
            if st.ack_due and self.live and (st.delivered - st.ack_sent >= ACK_BYTES or st.fin_in is not None
                                             or now - st.ack_since >= ACK_DELAY):
                st.ack_due, st.ack_sent = False, st.delivered
                self.send(frame(ACK, st.sid, st.delivered))
            if st.done():
                self.drop(st)
        self.flush()

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
        elif kind == ACK:
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
        for st in list(self.streams.values()):
            st.rewind(int(peer.get(str(st.sid), 0)))
        self.pump()

    def recv_offsets(self) -> dict:
        return {str(sid): st.recv for sid, st in self.streams.items()}


# --- the instance side ---------------------------------------------------------------------------------------------

def relay_dir() -> str:
    path = os.environ.get("NBCLOUD_RELAY_DIR") or os.path.join(os.path.expanduser("~"), ".nbcloud", "relay")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def socket_path() -> str:
    """One daemon per relay version (a new relay gets a new daemon) and per network namespace (unix sockets
    cross namespaces; 127.0.0.1 does not)."""
    with open(os.path.abspath(__file__), "rb") as fh:
        version = hashlib.sha256(fh.read()).hexdigest()[:12]
    try:
        netns = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        netns = 0
    return os.path.join(relay_dir(), f"relay-{version}-{netns}.sock")


class RelaySession(Endpoint):
    """One laptop's session on the instance: its streams to Jupyter, kept ``window`` seconds while detached."""

    def __init__(self, loop: Loop, sid: str, window: float) -> None:
        super().__init__(loop=loop)
        self.id, self.window = sid, window
        self.detached_at: float | None = time.monotonic()
        self.conn: socket.socket | None = None  # the attach process waits on it; closing it ends that attach
        self.closed = False
        self.last_ping = time.monotonic()

    def take_transport(self, conn: socket.socket, rfd: int, wfd: int, parser: Parser, info: dict,
                       resumed: bool) -> None:
        if self.rfd is not None:
            self.transport_lost("replaced by a newer attach")
        self.conn = conn
        self.attach(rfd, wfd)
        self.parser = parser  # keeps the bytes after the HELLO
        peer = info.get("streams", {})
        for sid in [s for s in self.streams if str(s) not in peer]:  # the laptop gave these up
            self.drop(self.streams[sid])
        self.send(hello({"resumed": resumed, "streams": self.recv_offsets()}))
        self.detached_at = None
        self.resume(peer)

    def transport_lost(self, why: str) -> None:
        fds = {self.rfd, self.wfd} - {None}
        self.detach()
        for fd in fds:
            os.close(fd)  # type: ignore[arg-type]
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.detached_at = time.monotonic()

    def may_read(self, st: Stream) -> bool:
        return st.sock is not None and getattr(st, "connected", True)

    def on_frame(self, kind: int, sid: int, value: int, payload: bytes) -> None:
        if kind == PING:
            self.send(frame(PONG, 0, value))
        elif kind == BYE:
            self.close()
        elif kind == OPEN:
            self.open_stream(sid, json.loads(payload))
        elif kind != PONG:
            self.on_stream_frame(kind, sid, value, payload)

    def open_stream(self, sid: int, target: dict) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in target["host"] else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        st = Stream(sid, sock)
        st.connected = False  # type: ignore[attr-defined]
        if sock.connect_ex((target["host"], int(target["port"]))) not in (0, errno.EINPROGRESS):
            sock.close()
            self.send(frame(RST, sid))
            return
        self.streams[sid] = st
        self.watch(sock.fileno(), self.on_connect, write=True)

    def on_connect(self, fd: int, events: int) -> None:
        st = self.sock_stream(fd)
        if st is None or st.sock is None:
            return self.forget(fd)
        if st.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            return self.reset(st, tell=True)
        st.connected = True  # type: ignore[attr-defined]
        self.watch(fd, self.on_sock, read=True, write=bool(st.out))

    def write_sock(self, st: Stream) -> None:
        if getattr(st, "connected", True):
            super().write_sock(st)

    def close(self) -> None:
        """BYE or the window passed: close every connection to Jupyter and end the attach."""
        for st in list(self.streams.values()):
            self.drop(st)
        if self.rfd is not None:
            self.transport_lost("closed")
        self.closed = True

    def tick(self, now: float) -> None:
        if self.live and now - self.last_ping >= 1.0:
            self.last_ping = now
            self.send(frame(PING, 0, int(now * 1000)))
            self.flush()
        if self.rfd is not None and now - self.last_rx > 10.0:  # the laptop went silent: free the attach
            self.transport_lost("attach silent")
        if self.detached_at is not None and now - self.detached_at > self.window:
            self.close()


class Daemon:
    """The relay daemon: a unix socket (0600) where attaches hand over their stdio; one RelaySession per laptop."""

    def __init__(self, path: str) -> None:
        self.loop = Loop()
        self.path = path
        self.sessions: dict[str, RelaySession] = {}
        self.pending: dict[int, tuple[socket.socket, int, Parser, float]] = {}
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            if os.path.exists(path):
                os.unlink(path)
            self.listener.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.listener.listen(8)
        self.loop.watch(self.listener.fileno(), self.on_accept, read=True)
        self.idle_since = time.monotonic()

    def on_accept(self, fd: int, events: int) -> None:
        """An attach hands over its stdin/stdout (the ssh session's pipes): we read and write them directly."""
        conn, _ = self.listener.accept()
        conn.settimeout(5)
        try:
            _, fds, _, _ = socket.recv_fds(conn, 16, 2)
        except OSError:
            fds = []
        if len(fds) != 2:
            for extra in fds:
                os.close(extra)
            conn.close()
            return
        os.set_blocking(fds[0], False)
        self.pending[fds[0]] = (conn, fds[1], Parser(), time.monotonic())
        self.loop.watch(fds[0], self.on_hello, read=True)

    def drop_pending(self, fd: int) -> None:
        conn, wfd, _, _ = self.pending.pop(fd)
        self.loop.forget(fd)
        os.close(fd)
        os.close(wfd)
        conn.close()  # the attach process exits, and the ssh session with it

    def on_hello(self, fd: int, events: int) -> None:
        """A new attach's first frame names its session: it becomes that session's transport."""
        conn, wfd, parser, _ = self.pending[fd]
        try:
            data = os.read(fd, CHUNK)
            frames = parser.feed(data) if data else None
        except BlockingIOError:
            return
        except (OSError, ProtocolError):
            frames = None
        if frames is None:
            return self.drop_pending(fd)
        if not frames:
            return
        kind, _, _, payload = frames[0]
        info = json.loads(payload) if kind == HELLO else {}
        if "session" not in info:
            return self.drop_pending(fd)
        old = self.sessions.get(info.get("replaces") or "")
        if old is not None:
            old.close()
        session = self.sessions.get(info["session"])
        resumed = session is not None
        if session is None:
            session = self.sessions[info["session"]] = RelaySession(self.loop, info["session"],
                                                                    float(info.get("window", 600)))
        self.pending.pop(fd)
        self.loop.forget(fd)
        session.take_transport(conn, fd, wfd, parser, info, resumed)
        for f in frames[1:]:
            if session.rfd is not None:
                session.on_frame(*f)

    def serve(self) -> None:
        while time.monotonic() - self.idle_since < 2.0:
            timeout = min([0.5] + [s.next_timeout(0.5) for s in self.sessions.values()])
            self.loop.run_once(timeout)
            now = time.monotonic()
            for session in list(self.sessions.values()):
                session.after_io()
                session.tick(now)
                if session.closed:
                    del self.sessions[session.id]
            for fd, (_, _, _, since) in list(self.pending.items()):
                if now - since > 20:  # an attach that never said HELLO
                    self.drop_pending(fd)
            if self.sessions or self.pending:
                self.idle_since = now
        os.unlink(self.path)


def daemon() -> int:
    lock = open(socket_path() + ".lock", "w")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another daemon runs
    Daemon(socket_path()).serve()
    return 0


def big_pipes(*fds: int) -> None:
    """1 MiB pipe buffers (Linux F_SETPIPE_SZ): fewer wake-ups per MB; not a pipe or not Linux: no matter."""
    for fd in fds:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, 1031, 1 << 20)


def attach() -> int:
    """Join stdin/stdout to the daemon; start it when needed."""
    big_pipes(0, 1)
    path = socket_path()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + 10
    started = False
    while True:
        try:
            sock.connect(path)
            break
        except OSError:
            if time.monotonic() > deadline:
                print("nbcloud relay: cannot reach the daemon", file=sys.stderr)
                return 1
            if not started:
                started = True
                log = os.open(os.path.join(relay_dir(), "daemon.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                pid = os.fork()
                if pid == 0:
                    os.setsid()
                    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                    os.dup2(log, 1)
                    os.dup2(log, 2)
                    if os.fork() == 0:
                        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), "daemon"])
                    os._exit(0)
                os.waitpid(pid, 0)
                os.close(log)
            time.sleep(0.05)

    # Hand our stdin/stdout to the daemon (no copying through this process), then wait: the daemon closes the
    # connection when it is done with this transport; ssh's session ends once both of us closed the pipes.
    socket.send_fds(sock, [b"A"], [0, 1])
    os.close(0)
    os.close(1)
    with contextlib.suppress(OSError):
        sock.recv(1)
    return 0


if __name__ == "__main__":
    sys.exit({"attach": attach, "daemon": daemon}[sys.argv[1]]())
