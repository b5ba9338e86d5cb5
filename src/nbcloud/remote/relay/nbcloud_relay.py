"""nbcloud relay: TCP streams that outlive the SSH link (standard library only; runs on the instance).

``attach`` is what the laptop runs over ssh: it hands its stdin/stdout to a long-lived ``daemon`` through a unix
socket (0600, in ~/.nbcloud/relay), starting the daemon when it is not running. The daemon holds the TCP
connections to Jupyter while the link is down and speaks the protocol of ``nbcloud_relay_protocol.py`` (shipped
beside this file) with the laptop, one session per laptop.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import sys
import time

try:
    from .nbcloud_relay_protocol import (
        BYE,
        CHUNK,
        DATA,
        HELLO,
        OPEN,
        PING,
        PONG,
        RST,
        Endpoint,
        Loop,
        Parser,
        ProtocolError,
        Stream,
        frame,
        hello,
    )
except ImportError:  # run as a script on the instance: the protocol file sits beside this one
    from nbcloud_relay_protocol import (  # type: ignore[no-redef]
        BYE,
        CHUNK,
        DATA,
        HELLO,
        OPEN,
        PING,
        PONG,
        RST,
        Endpoint,
        Loop,
        Parser,
        ProtocolError,
        Stream,
        frame,
        hello,
    )

# what the laptop ships, in this order
FILES = ("nbcloud_relay_wire.py", "nbcloud_relay_protocol.py", "nbcloud_relay.py")
HOUSEKEEPING = 0.02  # seconds between the daemon's timer rounds (pings, silent attaches, resume windows)


# --- the instance side ---------------------------------------------------------------------------------------------

def relay_dir() -> str:
    path = os.environ.get("NBCLOUD_RELAY_DIR") or os.path.join(os.path.expanduser("~"), ".nbcloud", "relay")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def socket_path() -> str:
    """One daemon per relay version (a new relay gets a new daemon) and per network namespace (unix sockets
    cross namespaces; 127.0.0.1 does not)."""
    digest = hashlib.sha256()
    for name in FILES:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), name), "rb") as fh:
            digest.update(fh.read())
    version = digest.hexdigest()[:12]
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
        if kind == DATA:
            self.on_stream_frame(kind, sid, value, payload)
        elif kind == PING:
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
        self.by_fd[sock.fileno()] = st
        self.dirty = True
        self.watch(sock.fileno(), self.on_connect, write=True)

    def on_connect(self, fd: int, events: int) -> None:
        st = self.sock_stream(fd)
        if st is None or st.sock is None:
            return self.forget(fd)
        if st.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            return self.reset(st, tell=True)
        st.connected = True  # type: ignore[attr-defined]
        self.dirty = True
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
        if self.detached_at is not None and (now - self.detached_at > self.window or not self.streams):
            self.close()  # past the window, or nothing to hold: a detached session without streams is forgotten


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
        sessions, last_house = self.sessions, 0.0
        while True:
            timeout = 0.5
            for session in sessions.values():
                timeout = session.next_timeout(timeout)
            self.loop.run_once(timeout)
            now = time.monotonic()
            for session in sessions.values():
                session.after_io(now)
            if now - last_house < HOUSEKEEPING:  # the timers are coarse: not after every request's round
                continue
            last_house = now
            for session in list(sessions.values()):
                session.tick(now)
                if session.closed:
                    del sessions[session.id]
            for fd, (_, _, _, since) in list(self.pending.items()):
                if now - since > 20:  # an attach that never said HELLO
                    self.drop_pending(fd)
            if sessions or self.pending:
                self.idle_since = now
            elif now - self.idle_since >= 2.0:
                break
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
