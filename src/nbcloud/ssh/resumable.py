"""The laptop's end of the resumable tunnel: local listeners whose connections outlive the SSH link.

Every accepted connection on a forward's 127.0.0.1 port becomes a stream of the relay protocol
(:mod:`nbcloud.remote.relay.nbcloud_relay`), carried by whatever ``ssh nb-NAME python3 - attach`` the supervisor
currently runs. While no transport is up the listeners stay open: held streams keep their unacknowledged bytes
for the resume window, new ones wait (``hold_new`` seconds) and then get a 504 page naming the outage.
:class:`LocalMux` runs in its own thread; the supervisor hands it transports through :meth:`LocalMux.call`.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from ..remote.relay.nbcloud_relay_protocol import (
    BYE,
    DATA,
    HELLO,
    OPEN,
    PING,
    PONG,
    Endpoint,
    Stream,
    frame,
    hello,
)
from .tunnel import Forward

__all__ = ["LocalMux", "Outage", "outage_seconds", "relay_command", "relay_preamble", "timeout_page"]

RELAY_DIR = "~/.nbcloud/relay"
# The relay uses socket.send_fds (3.9); the loader checks first (in syntax every python3 parses) and exits with
# RELAY_TOO_OLD, which the supervisor reads as "fall back to a plain tunnel" (tunnel.relay_unavailable).
RELAY_MIN_PYTHON = (3, 9)
RELAY_TOO_OLD = 86
# Reads the relay's files (count, then name and content, length-prefixed) from stdin, installs those that changed,
# then becomes `relay attach`: the instance needs nothing but python3, and an updated nbcloud brings its relay along.
_LOADER = (
    "import os,sys\n"
    f"if sys.version_info<{RELAY_MIN_PYTHON}:\n"
    " sys.stderr.write('nbcloud-relay: python %d.%d is older than "
    f"{RELAY_MIN_PYTHON[0]}.{RELAY_MIN_PYTHON[1]}\\n'%sys.version_info[:2]);sys.exit({RELAY_TOO_OLD})\n"
    "def r(n):\n"
    " b=b''\n"
    " while len(b)<n:\n"
    "  c=os.read(0,n-len(b))\n"
    "  if not c: sys.exit(3)\n"
    "  b+=c\n"
    " return b\n"
    "d=os.path.expanduser(sys.argv[1]);os.makedirs(d,mode=0o700,exist_ok=True);os.chmod(d,0o700)\n"
    "for k in range(int(r(2))):\n"
    " p=os.path.join(d,os.path.basename(r(int(r(2))).decode()));s=r(int(r(10)))\n"
    " try: o=open(p,'rb').read()\n"
    " except OSError: o=None\n"
    " if o!=s:\n"
    "  t=p+'.%d'%os.getpid();f=open(t,'wb');f.write(s);f.close();os.replace(t,p)\n"
    "os.environ['NBCLOUD_RELAY_DIR']=d\n"
    "p=os.path.join(d,'nbcloud_relay.py');os.execv(sys.executable,[sys.executable,p,'attach'])\n"
)


def relay_files() -> list[tuple[str, bytes]]:
    from ..remote.relay.nbcloud_relay import FILES

    folder = resources.files("nbcloud.remote.relay")
    return [(name, folder.joinpath(name).read_bytes()) for name in FILES]


def relay_command(python: str = "python3", relay_dir: str | None = None) -> str:
    """The remote command (one shell word each); no secret in it. ``relay_dir`` (default ~/.nbcloud/relay, or
    $NBCLOUD_REMOTE_RELAY_DIR) holds the relay, its unix socket (0600) and its log on the instance."""
    where = relay_dir or os.environ.get("NBCLOUD_REMOTE_RELAY_DIR") or RELAY_DIR
    return " ".join(shlex.quote(w) for w in (python, "-c", _LOADER, where))


def relay_preamble(files: list[tuple[str, bytes]] | None = None) -> bytes:
    """What the loader of :func:`relay_command` reads from stdin before the protocol starts."""
    files = relay_files() if files is None else files
    out = [b"%02d" % len(files)]
    for name, content in files:
        out += [b"%02d" % len(name), name.encode(), b"%010d" % len(content), content]
    return b"".join(out)


def timeout_page(name: str, waited: float) -> bytes:
    body = (f"nbcloud: the link to {name} is down (waited {waited:.0f} s for it to come back).\n"
            f"The tunnel keeps retrying; `nbcloud status {name}` shows it. Reload this page to try again.\n").encode()
    return (b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
            b"Retry-After: 5\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def outage_seconds(mono_start: float, wall_start: float, mono_now: float, wall_now: float) -> float:
    """How long the transport has been down. The monotonic clock stops while a laptop sleeps; the wall clock
    does not (but may be set back): the larger of the two counts."""
    return max(mono_now - mono_start, wall_now - wall_start, 0.0)


@dataclass
class Outage:
    started: str
    seconds: float = 0.0
    held: int = 0  # streams held through it
    closed: int = 0  # streams closed because the resume window passed (or the relay lost them)
    timed_out: int = 0  # new connections answered 504
    resumed: bool | None = None  # None while it lasts


class LocalMux(Endpoint):
    def __init__(self, name: str, forwards: list[Forward], *, window: float = 600.0, hold_new: float = 60.0,
                 dead_after: float = 4.0, ping_every: float = 1.0, log: Callable[[str], None] = print,
                 stream_window: int | None = None, session_bytes: int | None = None) -> None:
        kw = {k: v for k, v in (("stream_window", stream_window), ("session_bytes", session_bytes)) if v}
        super().__init__(**kw)
        self.name, self.forwards, self.log = name, forwards, log
        self.window, self.hold_new, self.dead_after, self.ping_every = window, hold_new, dead_after, ping_every
        self.handshake_timeout = 20.0  # ssh + python start + the relay daemon's first start on a slow instance
        self.session, self.replaces = uuid.uuid4().hex, ""
        self.listeners: dict[int, tuple[socket.socket, Forward]] = {}
        self.targets: dict[int, Forward] = {}
        self.created: dict[int, float] = {}
        self.opened: set[int] = set()
        self.next_sid = 1
        self.transport_id = 0  # bumps at every attach; `live_id` says which one finished its handshake
        self.live_id = 0
        self.dead_reason: str | None = None
        self.down_mono: float | None = time.monotonic()
        self.down_wall = time.time()
        self.outage: Outage | None = None
        self.last_outage: Outage | None = None
        self.last_ping = 0.0
        self.clock = (time.monotonic(), time.time())
        self._calls: list[tuple[Callable[[], Any], threading.Event]] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self.watch(self._wake_r, self._on_wake, read=True)
        self._stop = False
        self.thread: threading.Thread | None = None

    # --- the thread and its mailbox ------------------------------------------------------------------------------
    def bind(self) -> None:
        """Listen on every forward's 127.0.0.1 port; OSError (port taken) goes to the caller."""
        for fw in self.forwards:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", fw.local_port))
            except OSError:
                sock.close()
                self.close_listeners()
                raise
            sock.listen(128)
            sock.setblocking(False)
            self.listeners[sock.fileno()] = (sock, fw)
            self.watch(sock.fileno(), self._on_accept, read=True)

    def close_listeners(self) -> None:
        for fd, (sock, _) in list(self.listeners.items()):
            self.forget(fd)
            sock.close()
        self.listeners.clear()

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="relay-mux", daemon=True)
        self.thread.start()

    def call(self, fn: Callable[[], Any], timeout: float = 5.0) -> None:
        """Run ``fn`` on the mux thread and wait for it (the thread owns every socket and fd). Once the thread has
        ended nothing would run it: dropped at once (it used to wait out ``timeout``: a second stop() held every
        `disconnect` 5 s, until the supervisor was killed)."""
        if self.thread is not None and not self.thread.is_alive():
            return
        done = threading.Event()
        with self._lock:
            self._calls.append((fn, done))
        os.write(self._wake_w, b"x")
        done.wait(timeout)

    def _on_wake(self, fd: int, events: int) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(fd, 4096)
        with self._lock:
            calls, self._calls = self._calls, []
        for fn, done in calls:
            try:
                fn()
            finally:
                done.set()

    def _run(self) -> None:
        last_tick = 0.0
        while not self._stop:
            self.loop.run_once(self.next_timeout(0.25))
            now = time.monotonic()
            self.after_io(now)
            if now - last_tick >= 0.02:  # the timers are coarse: not after every request's round
                last_tick = now
                self.tick()
        for st in list(self.streams.values()):
            self.drop(st)
        self.close_listeners()

    def stop(self, bye_timeout: float = 1.5) -> None:
        """Tell the relay we are done (it frees the instance side at once), then end the thread. Once only."""
        if self._stop:
            return

        def bye() -> None:
            if self.live:
                self.send(frame(BYE))
                self.flush()
        self.call(bye)
        deadline = time.monotonic() + bye_timeout
        while self.wfd is not None and time.monotonic() < deadline:
            time.sleep(0.02)  # until the relay closes the transport: it has then freed the session
        self._stop = True
        os.write(self._wake_w, b"x")
        if self.thread is not None:
            self.thread.join(5)

    # --- transports (called through `call`) ----------------------------------------------------------------------
    def use_transport(self, rfd: int, wfd: int, preamble: bytes) -> int:
        self.transport_id += 1
        self.dead_reason = None
        info = {"session": self.session, "replaces": self.replaces, "window": self.window,
                "streams": self.recv_offsets()}
        self.attach(rfd, wfd, preamble + hello(info))
        return self.transport_id

    def drop_transport(self) -> None:
        if self.rfd is not None:
            self.transport_lost("ssh ended")

    def transport_lost(self, why: str) -> None:
        was_live = self.live
        self.detach()
        self.dead_reason = why
        if self.down_mono is None:
            mono = time.monotonic()
            self.down_mono = self.last_rx if was_live else mono  # dead since the last word heard
            self.down_wall = time.time() - (mono - self.down_mono)
            self.outage = Outage(started=_iso(self.down_wall), held=len(self.streams))
            self.log(f"relay: transport lost ({why}); holding {len(self.streams)} connection(s)")

    # --- frames ----------------------------------------------------------------------------------------------------
    def on_frame(self, kind: int, sid: int, value: int, payload: bytes) -> None:
        if kind == DATA:
            self.on_stream_frame(kind, sid, value, payload)
        elif kind == HELLO:
            self._on_hello(_json(payload))
        elif kind == PING:
            self.send(frame(PONG, 0, value))
        elif kind != PONG:
            self.on_stream_frame(kind, sid, value, payload)

    def _on_hello(self, info: dict[str, Any]) -> None:
        peer = {str(k): int(v) for k, v in (info.get("streams") or {}).items()}
        closed = 0
        for st in list(self.streams.values()):
            if str(st.sid) in peer:
                continue
            if st.recv or st.acked:
                closed += 1  # the relay no longer has it (window passed, relay restarted): close it cleanly
                self.drop(st)
            else:
                self.send(self._open_frame(st.sid))  # never reached the relay, or got nothing back yet: (re)open
        self.opened = set(self.streams)
        self.replaces = ""
        self.live_id = self.transport_id
        self.resume(peer)
        if self.outage is not None and self.down_mono is not None:
            o = self.outage
            o.seconds = round(outage_seconds(self.down_mono, self.down_wall, time.monotonic(), time.time()), 2)
            o.closed += closed
            o.resumed = bool(info.get("resumed")) and closed == 0
            self.last_outage = o
            self.log(f"relay: resumed after {o.seconds:.1f} s; {len(self.streams)} connection(s) carried on, "
                     f"{o.closed} closed")
        self.outage, self.down_mono = None, None

    def _open_frame(self, sid: int) -> bytes:
        fw = self.targets[sid]
        return frame(OPEN, sid, payload=_dumps({"host": fw.remote_host, "port": fw.remote_port}))

    def _on_accept(self, fd: int, events: int) -> None:
        listener, fw = self.listeners[fd]
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sid, self.next_sid = self.next_sid, self.next_sid + 1
        self.targets[sid], self.created[sid] = fw, time.monotonic()
        self.add_stream(Stream(sid, conn))
        if self.live:
            self.send(self._open_frame(sid))
            self.opened.add(sid)

    def drop(self, st: Stream) -> None:
        super().drop(st)
        self.targets.pop(st.sid, None)
        self.created.pop(st.sid, None)
        self.opened.discard(st.sid)

    # --- timers ----------------------------------------------------------------------------------------------------
    def tick(self) -> None:
        mono, wall = time.monotonic(), time.time()
        jumped = (wall - self.clock[1]) - (mono - self.clock[0]) > 3.0  # the process slept (laptop suspended)
        self.clock = (mono, wall)
        if self.rfd is not None:
            if jumped:
                self.transport_lost("woke from sleep")
            elif mono - self.last_rx > (self.dead_after if self.live else self.handshake_timeout):
                self.transport_lost(f"no answer for {mono - self.last_rx:.0f} s")
            elif self.live and mono - self.last_ping >= self.ping_every:
                self.last_ping = mono
                self.send(frame(PING, 0, int(mono * 1000)))
                self.flush()
        if not self.live:
            self._expire(mono, wall)

    def _expire(self, mono: float, wall: float) -> None:
        for sid, created in list(self.created.items()):
            st = self.streams.get(sid)
            if st is not None and sid not in self.opened and mono - created > self.hold_new:
                self._answer_timeout(st, mono - created)
        if self.down_mono is None or not self.streams:
            return
        if outage_seconds(self.down_mono, self.down_wall, mono, wall) > self.window:
            n = sum(1 for sid in self.streams if sid in self.opened)
            for st in [s for s in self.streams.values() if s.sid in self.opened]:
                self.drop(st)
            if n:
                # The relay drops this session too; the next attach starts a fresh one and frees the old at once.
                self.replaces, self.session = self.session, uuid.uuid4().hex
                if self.outage is not None:
                    self.outage.closed += n
                self.log(f"relay: link down longer than the resume window ({self.window:g} s): closed {n} "
                         f"connection(s)")

    def _answer_timeout(self, st: Stream, waited: float) -> None:
        if st.sock is not None:
            try:
                while st.sock.recv(65536):  # unread request bytes would turn our close into a reset
                    pass
            except OSError:
                pass
            try:
                st.sock.send(timeout_page(self.name, waited))
                st.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if self.outage is not None:
            self.outage.timed_out += 1
        self.drop(st)


def _json(payload: bytes) -> dict[str, Any]:
    import json

    try:
        value = json.loads(payload)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _dumps(value: object) -> bytes:
    import json

    return json.dumps(value).encode()


def _iso(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
