"""The supervised loop behind a self-healing port forward: OpenSSH does the forwarding, we keep it alive.

One ``ssh -N -L …`` at a time. Its stderr (LogLevel VERBOSE) tells us when it authenticated and why it died;
``TunnelSupervisor`` turns that into a small JSON state file that ``nbcloud status``/``connect`` read. While the
link is down we do not spawn ssh after ssh: a non-blocking TCP connect to the server's port every ~0.25 s is the
probe (cheap, and a fresh SYN each time, so a healed link is noticed within one probe even when the old SYNs were
dropped), and ssh starts as soon as one probe connects. The resolver (a cloud API call) runs in a thread, at most
every ``resolve_every`` seconds while reconnects fail, so a slow API never delays a retry.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import cast

from ..config import write_private
from .resumable import RELAY_TOO_OLD, LocalMux, relay_command, relay_preamble
from .tunnel import (
    STOPPED_REASONS,
    Event,
    Forward,
    ResolveResult,
    TunnelState,
    build_relay_argv,
    build_ssh_argv,
    classify_line,
    listening_ports,
    now_iso,
    relay_unavailable,
)

__all__ = ["TunnelSupervisor"]


def _last_words(proc: subprocess.Popen[bytes], fd: int, buf: bytes) -> bytes:
    """ssh is ending by itself: wait for its exit status and read the rest of its stderr (``fd``, non-blocking),
    which may say the relay cannot run there."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=2)
    with contextlib.suppress(OSError):
        while chunk := os.read(fd, 65536):
            buf += chunk
    return buf


def _relay_outcome(returncode: int | None, is_up: bool, said: list[str], buf: bytes, last: Event | None) -> Event:
    """How one relay attempt ended: ``norelay`` when ssh never came up and its words say the relay cannot run
    there, else the first telling event (``up:`` prefixed once the relay had answered), else ssh's exit status."""
    if not is_up:
        said += [line.strip() for line in buf.decode(errors="replace").splitlines() if line.strip()]
        why = relay_unavailable(returncode, said, RELAY_TOO_OLD)
        if why is not None:
            return Event("norelay", why)
    if last is None:
        last = Event("lost" if is_up else "reject", f"ssh exited with status {returncode}")
    return Event(("up:" if is_up else "") + last.kind, last.reason)


def _pdeathsig() -> Callable[[], None] | None:
    """A preexec hook that makes ssh die with the supervisor (Linux), so a SIGKILLed supervisor leaks nothing."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved now: the child only calls a function pointer
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class TunnelSupervisor:
    def __init__(self, name: str, host_alias: str, forwards: list[Forward], ssh_config: Path, state_file: Path,
                 log_file: Path, resolver: Callable[[], ResolveResult], keepalive_interval: int = 2,
                 keepalive_count: int = 2, backoff_max: float = 5.0, *, retry_interval: float = 0.25,
                 connect_timeout: int = 5, attempt_timeout: float = 20.0, resolve_every: float = 5.0,
                 ssh_binary: str = "ssh", mode: str = "plain", resume_window: float = 600.0,
                 hold_new: float = 60.0) -> None:
        self.name, self.host_alias, self.forwards = name, host_alias, list(forwards)
        self.ssh_config, self.state_file, self.log_file = Path(ssh_config), Path(state_file), Path(log_file)
        self.resolver = resolver
        self.keepalive_interval, self.keepalive_count = keepalive_interval, keepalive_count
        self.backoff_max, self.retry_interval = backoff_max, retry_interval
        self.connect_timeout, self.attempt_timeout, self.resolve_every = connect_timeout, attempt_timeout, resolve_every
        self.ssh_binary = ssh_binary
        self._stop_requested = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._ever_up = False
        self._state = TunnelState(name=name, state="connecting", since=now_iso(), reason="starting",
                                  local_ports={f.label: f.local_port for f in self.forwards},
                                  remote_ports={f.label: f.remote_port for f in self.forwards},
                                  remote_hosts={f.label: f.remote_host for f in self.forwards}, pid=os.getpid(),
                                  mode=mode, resume_window=resume_window if mode == "resumable" else None)
        self._mux: LocalMux | None = None
        if mode == "resumable":
            self._mux = LocalMux(name, self.forwards, window=resume_window, hold_new=hold_new, log=self.log)
        self._resolve_thread: threading.Thread | None = None
        self._resolved: ResolveResult | None = None
        self._last_resolve = -1e9
        self._target_cache: tuple[tuple[int, int], tuple[str, int] | None] | None = None
        self._ip_qos: str | None = None  # from `ssh -G` (see _target)

    # --- bookkeeping ---------------------------------------------------------------------------------------------

    def log(self, msg: str) -> None:
        # O_APPEND: the detached process's stdout/stderr (tracebacks) go to the same file, interleaved by line.
        with open(self.log_file, "a", encoding="utf-8") as fh:
            fh.write(f"{now_iso()} [{self.name}] {msg}\n")

    def _set(self, state: str | None = None, reason: str | None = None, **changes: object) -> None:
        cur = self._state
        if state is not None and state != cur.state:
            changes["since"] = now_iso()
            self.log(f"state {cur.state} -> {state}: {reason or cur.reason}")
        fields = {**asdict(cur), **changes, "updated": now_iso()}
        if state is not None:
            fields["state"] = state
        if reason is not None:
            fields["reason"] = reason
        self._state = TunnelState(**fields)
        write_private(self.state_file, self._state.to_json())

    # --- resolver (threaded, rate-limited) -----------------------------------------------------------------------

    def _kick_resolver(self) -> None:
        if self._resolve_thread is not None or time.monotonic() - self._last_resolve < self.resolve_every:
            return
        self._last_resolve = time.monotonic()

        def work() -> None:
            try:
                result = self.resolver()
            except Exception as exc:  # an API hiccup must never kill the tunnel
                self.log(f"resolver failed: {exc!r}")
                result = ResolveResult("unknown", None)
            self._resolved = result

        self._resolve_thread = threading.Thread(target=work, name="resolver", daemon=True)
        self._resolve_thread.start()

    def _take_resolved(self) -> ResolveResult | None:
        """The resolver's answer once its thread finished, else None; records instance_state."""
        t = self._resolve_thread
        if t is None or t.is_alive():
            return None
        self._resolve_thread = None
        result, self._resolved = self._resolved, None
        if result is not None and result.state != self._state.instance_state:
            self.log(f"resolver: instance {result.state}, address {result.host or '?'}")
            self._set(instance_state=result.state)
        return result

    def _resolve_now(self) -> ResolveResult | None:
        if self._resolve_thread is not None:
            self._resolve_thread.join()
        self._last_resolve = -1e9
        self._kick_resolver()
        assert self._resolve_thread is not None
        self._resolve_thread.join()
        return self._take_resolved()

    # --- probing ---------------------------------------------------------------------------------------------------

    def _target(self) -> tuple[str, int] | None:
        """(host, port) ssh will connect to, per ``ssh -G``; None when it goes through a proxy (cannot probe).

        Cached on the config file's identity: the lead's code replaces the file atomically when the address moves.
        """
        try:
            st = self.ssh_config.stat()
            key = (st.st_ino, st.st_mtime_ns)
        except OSError:
            return None
        if self._target_cache is not None and self._target_cache[0] == key:
            return self._target_cache[1]
        target: tuple[str, int] | None = None
        try:
            out = subprocess.run([self.ssh_binary, "-F", str(self.ssh_config), "-G", self.host_alias],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
            opts = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
            self._ip_qos = (opts.get("ipqos", "").split() or [None])[0]  # the interactive value: see relay_argv
            if opts.get("proxycommand", "none") == "none" and opts.get("proxyjump", "none") == "none":
                target = (opts["hostname"], int(opts.get("port", "22")))
        except (OSError, subprocess.SubprocessError, KeyError, ValueError) as exc:
            self.log(f"ssh -G failed, retrying without probes: {exc!r}")
        self._target_cache = (key, target)
        return target

    def _wait_reachable(self, delay: float) -> str | None:
        """Wait at least ``delay`` s and until a TCP probe to sshd connects. Returns a down reason, or None to go on.

        A new probe every retry_interval (with jitter) while older ones stay pending for up to 3 s: a SYN lost on a
        dead link is retransmitted by the kernel only after 1 s, 3 s, …, so fresh sockets are what notice a heal.
        Every failed probe may ask the resolver (rate-limited): the instance may be stopped or have a new address.
        """
        not_before = time.monotonic() + delay
        pending: dict[socket.socket, float] = {}
        sel = selectors.DefaultSelector()
        next_probe = time.monotonic()
        reachable = False
        try:
            while not self._stop_requested:
                self._publish_mux()
                verdict = self._take_resolved()
                if verdict is not None and verdict.state in STOPPED_REASONS:
                    return STOPPED_REASONS[verdict.state]
                now = time.monotonic()
                if reachable and now >= not_before:
                    return None
                target = self._target()
                if target is None:  # behind a proxy: no probing, just pace the attempts
                    not_before = max(not_before, now + self.retry_interval)
                    reachable = True
                    time.sleep(max(0.0, min(0.1, not_before - now)))
                    continue
                if now >= next_probe and not reachable:
                    next_probe = now + self.retry_interval * random.uniform(0.8, 1.2)
                    sock = self._probe(target)
                    if sock is None:
                        self._kick_resolver()  # failed locally (no route, no DNS): the link or the address is gone
                    else:
                        sel.register(sock, selectors.EVENT_WRITE)
                        pending[sock] = now
                wait = (not_before if reachable else next_probe) - time.monotonic()
                for key, _ in sel.select(timeout=max(0.0, min(0.1, wait))) if pending else ():
                    probe = cast(socket.socket, key.fileobj)
                    err = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    sel.unregister(probe)
                    del pending[probe]
                    probe.close()
                    if err == 0:
                        reachable = True
                    else:
                        self._kick_resolver()  # refused or unreachable: stopped? moved?
                if not pending:
                    time.sleep(max(0.0, min(0.1, wait)))
                for sock, started in list(pending.items()):
                    if time.monotonic() - started > 3.0:
                        sel.unregister(sock)
                        del pending[sock]
                        sock.close()
                        self._kick_resolver()
            return None
        finally:
            for sock in pending:
                sock.close()
            sel.close()

    @staticmethod
    def _probe(target: tuple[str, int]) -> socket.socket | None:
        """Start a non-blocking connect to sshd; None when it failed at once."""
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(target[0], target[1], type=socket.SOCK_STREAM)[0]
        except OSError:
            return None
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        if sock.connect_ex(addr) in (0, errno.EINPROGRESS):
            return sock
        sock.close()
        return None

    # --- one ssh attempt -------------------------------------------------------------------------------------------

    def ssh_argv(self) -> list[str]:
        """The tunnel's keepalives go on its own command line: they override the gentler ones of the Host block
        (an interactive ssh should ride out a stall; the tunnel should notice a dead link within seconds)."""
        return build_ssh_argv(self.host_alias, self.forwards, self.ssh_config,
                              keepalive_interval=self.keepalive_interval, keepalive_count=self.keepalive_count,
                              connect_timeout=self.connect_timeout, ssh_binary=self.ssh_binary)

    def relay_argv(self) -> list[str]:
        return build_relay_argv(self.host_alias, self.ssh_config, relay_command(),
                                keepalive_interval=self.keepalive_interval, keepalive_count=self.keepalive_count,
                                connect_timeout=self.connect_timeout, ssh_binary=self.ssh_binary,
                                ip_qos=self._ip_qos)

    def _publish_mux(self) -> None:
        """Copy what the mux thread knows (held streams, the last outage) into the state file when it changed."""
        mux = self._mux
        if mux is None:
            return
        held = len(mux.streams)
        current = mux.outage if mux.outage is not None else mux.last_outage  # the one under way, else the last
        outage = asdict(current) if current is not None else None
        if held != self._state.held_connections or outage != self._state.last_outage:
            self._set(held_connections=held, last_outage=outage)

    def _attempt(self) -> Event:
        """Run ssh until it exits; returns why it ended. Marks the tunnel up once authenticated and listening."""
        if self._mux is not None:
            return self._attempt_relay(self._mux)
        proc = subprocess.Popen(self.ssh_argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, preexec_fn=_pdeathsig(), close_fds=True)
        self._proc = proc
        assert proc.stderr is not None
        self._set(ssh_pid=proc.pid, attempts=self._state.attempts + 1)
        fd = proc.stderr.fileno()
        os.set_blocking(fd, False)
        started, authed_at, is_up = time.monotonic(), None, False
        last: Event | None = None
        buf = b""
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        eof = False
        try:
            while not eof:
                if self._stop_requested:
                    self._kill_ssh()
                ready = sel.select(timeout=0.5 if is_up else 0.05)
                if not ready and proc.poll() is not None:
                    eof = True  # ssh is gone; a grandchild (ProxyCommand) may hold the pipe open
                if ready:
                    try:
                        chunk = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    eof = chunk == b""
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for raw in lines:
                        line = raw.decode(errors="replace").rstrip()
                        if line:
                            self.log(f"ssh: {line}")
                        ev = classify_line(line)
                        if ev is None:
                            continue
                        if ev.kind == "auth":
                            authed_at = time.monotonic()
                        elif last is None or last.kind not in ("hostkey", ev.kind):
                            last = ev  # the first line of a kind is the specific one ("bind …: in use")
                if not is_up and authed_at is not None and proc.poll() is None and self._listening(authed_at):
                    is_up = True
                    self._ever_up = True
                    self._set("up", "connected", last_up=now_iso(), attempts=0)
                if not is_up and time.monotonic() - started > self.attempt_timeout:
                    # A link that dies mid-handshake leaves ssh waiting on TCP for minutes: cut it short.
                    last = Event("fail", "ssh handshake timed out")
                    self._kill_ssh()
        finally:
            sel.close()
            self._kill_ssh()
            proc.stderr.close()
        if last is None:
            last = Event("lost" if is_up else "reject", f"ssh exited with status {proc.returncode}")
        return Event(("up:" if is_up else "") + last.kind, last.reason)

    def _attempt_relay(self, mux: LocalMux) -> Event:
        """One transport for the resumable streams: ssh running the relay's attach, its stdio handed to the mux.
        Up once the relay answered the HELLO; over when ssh exits or the mux hears nothing (its pings)."""
        ours, proc = self._spawn_relay_ssh()
        assert proc.stderr is not None
        ids: list[int] = []
        mux.call(lambda: ids.append(mux.use_transport(ours.fileno(), ours.fileno(), self._preamble)))
        tid = ids[0] if ids else -1
        fd = proc.stderr.fileno()
        os.set_blocking(fd, False)
        started, is_up, last, buf = time.monotonic(), False, None, b""
        said: list[str] = []  # stderr lines before the relay came up: they may say it cannot run there
        gone = False
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        try:
            while True:
                if self._stop_requested:
                    mux.stop()  # says BYE while the transport still carries it
                    break
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    chunk = None
                if chunk:
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for raw in lines:
                        line = raw.decode(errors="replace").rstrip()
                        if line:
                            self.log(f"ssh: {line}")
                            if not is_up:
                                said.append(line)
                        ev = classify_line(line)
                        if ev is not None and ev.kind != "auth" and (last is None or last.kind == "hostkey"):
                            last = last or ev
                gone = chunk == b"" or proc.poll() is not None
                if not is_up and mux.live_id == tid and mux.rfd is not None:
                    is_up = self._ever_up = True
                    self._publish_mux()
                    self._set("up", self._up_reason(mux), last_up=now_iso(), attempts=0)
                self._publish_mux()
                if mux.rfd is None and mux.transport_id == tid:  # the mux gave up on this transport
                    last = last or Event("lost" if is_up else "fail", f"link lost: {mux.dead_reason}")
                    break
                if gone:
                    break
                if not is_up and time.monotonic() - started > self.attempt_timeout:
                    last = Event("fail", "ssh handshake timed out")
                    break
                sel.select(timeout=0.05 if not is_up else 0.2)  # wakes at once when ssh writes or exits
        finally:
            sel.close()
            if not self._stop_requested:
                mux.call(mux.drop_transport)
            if not is_up and (gone or mux.rfd is None) and not self._stop_requested:
                buf = _last_words(proc, fd, buf)
            self._kill_ssh()
            proc.stderr.close()
            ours.close()
        return _relay_outcome(proc.returncode, is_up, said, buf, last)

    def _spawn_relay_ssh(self) -> tuple[socket.socket, subprocess.Popen[bytes]]:
        """ssh running the relay's attach, its stdin and stdout one end of a socketpair (ours: the other end).

        A socket, not pipes: ssh writes a pipe in small pieces (~100 MB/s here), a socket with big buffers at the
        speed of a -L forward."""
        ours, theirs = socket.socketpair()
        for sock in (ours, theirs):
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                sock.setsockopt(socket.SOL_SOCKET, opt, 1 << 20)
        try:
            proc = subprocess.Popen(self.relay_argv(), stdin=theirs, stdout=theirs, stderr=subprocess.PIPE,
                                    preexec_fn=_pdeathsig(), close_fds=True)
        finally:
            theirs.close()
        self._proc = proc
        self._set(ssh_pid=proc.pid, attempts=self._state.attempts + 1)
        return ours, proc

    def _fall_back(self, why: str) -> None:
        """The instance cannot run the relay: carry on as a plain ``ssh -N -L`` tunnel (its connections do not
        outlive an outage). The mux gives its local ports back first, for ssh to listen on them."""
        mux, self._mux = self._mux, None
        if mux is not None:
            mux.stop(bye_timeout=0)
        self.log(f"relay unavailable ({why}): falling back to a plain tunnel")
        self._set(mode="plain", fallback=why, resume_window=None, held_connections=0, last_outage=None)

    @staticmethod
    def _up_reason(mux: LocalMux) -> str:
        o = mux.last_outage
        if o is None or o.resumed is None:
            return "connected"
        if o.closed:
            return f"reconnected after {o.seconds:.0f} s; {o.closed} connection(s) closed (resume window passed)"
        return f"reconnected after {o.seconds:.0f} s; {o.held} connection(s) carried through"

    def _listening(self, authed_at: float) -> bool:
        """ssh binds the -L listeners right after auth and exits on a bind failure (ExitOnForwardFailure), so
        authenticated + alive + ports listening == up. Without /proc, alive 0.2 s after auth stands in."""
        ports = listening_ports()
        if ports is None:
            return time.monotonic() - authed_at > 0.2
        return all(f.local_port in ports for f in self.forwards)

    def _kill_ssh(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    # --- the loop --------------------------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stop_requested = True

    def run(self) -> int:
        """Supervise until stopped (SIGTERM/SIGINT → 0), the instance is gone (→ 0) or the host key is wrong (→ 1)."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal must not end a detached tunnel
        if self._mux is not None:
            try:
                self._mux.bind()
            except OSError as exc:
                busy = next((f.local_port for f in self.forwards if not _free(f.local_port)), None)
                why = f"local port {busy} is in use by another program" if busy else f"cannot listen: {exc}"
                self._set("down", why, ssh_pid=None)
                return 1
            self._preamble = relay_preamble()
            self._mux.start()
        self._set("connecting", "starting")
        code, reason = self._loop()
        if self._mux is not None:
            self._mux.stop()
        self._kill_ssh()
        self._set("down", reason, ssh_pid=None, held_connections=0)
        return code

    def _loop(self) -> tuple[int, str]:
        failures = 0  # consecutive attempts that reached the server but did not come up
        delay = 0.0
        tried_host: str | None = None
        spawned = 0  # only the very first attempt skips the probe
        while not self._stop_requested:
            if spawned:
                down = self._wait_reachable(delay)
                if down is not None:
                    return 0, down
                if self._stop_requested:
                    break
            target = self._target()
            spawned += 1
            ev = self._attempt()
            self._proc = None
            if self._stop_requested:
                break
            was_up = ev.kind.startswith("up:")
            kind = ev.kind.removeprefix("up:")
            if kind == "norelay":
                self._fall_back(ev.reason)
                continue
            if was_up:
                failures, delay = 0, 0.0
            if kind == "hostkey":
                # Before giving up: the address may have moved to another machine (EC2 recycles public IPs after a
                # stop). Ask the resolver; if it hands us a new address, that one must present the pinned key.
                result = self._resolve_now()
                host = target[0] if target else None
                if result is not None and result.state in STOPPED_REASONS:
                    return 0, STOPPED_REASONS[result.state]
                if result is not None and result.host and result.host not in (host, tried_host):
                    tried_host = result.host
                    self._set("connecting" if not self._ever_up else "reconnecting", ev.reason, ssh_pid=None)
                    continue
                return 1, f"{ev.reason} ({self.host_alias}); refusing to connect — check the instance, then " \
                          f"`nbcloud connect {self.name}` again"
            if not was_up:
                failures += 1
                self._kick_resolver()
            # Unreachable: the probes pace the retries. Reached but refused (auth, sshd starting, a local port taken,
            # unknown exits): exponential backoff up to backoff_max, so we never spin on a server that says no.
            delay = min(self.backoff_max, 0.25 * 2 ** min(failures, 10)) if kind in ("reject", "port_busy") else 0.0
            self._set("reconnecting" if self._ever_up else "connecting", ev.reason, ssh_pid=None)
        return 0, "disconnected"
