"""Self-healing port forwards to an instance: start, stop and inspect a detached supervisor per instance.

The supervisor (:mod:`nbcloud.ssh.supervisor`) runs as its own session-leader process
``python -m nbcloud.ssh.tunnel <args-file>`` so the tunnel outlives the CLI that started it and a closed terminal.
It talks to the rest of nbcloud only through files in ``paths().tunnels_dir``: ``<name>.args.json`` (how to run;
no secrets), ``<name>.json`` (its state, rewritten atomically on every change) and ``<name>.log``.
This module holds the public API and the pure parts (types, the reading of ssh's stderr, the ssh command line);
the loop itself is :class:`nbcloud.ssh.supervisor.TunnelSupervisor`, run by :mod:`nbcloud.ssh.tunnel_process`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ..config import ensure_private_dir, paths, write_private
from ..errors import HostKeyError, TunnelError, UsageError

__all__ = [
    "Forward",
    "ResolveResult",
    "TunnelState",
    "build_relay_argv",
    "build_ssh_argv",
    "classify_line",
    "host_alias_for",
    "log_path",
    "pick_local_port",
    "port_is_free",
    "read_state",
    "relay_unavailable",
    "start_supervisor",
    "state_path",
    "stop_supervisor",
    "tunnel_options_from_env",
    "wait_until_up",
]

_ENTRY = "nbcloud.ssh.tunnel"
_LOG_ROTATE_BYTES = 5 * 1024 * 1024
_children: dict[int, subprocess.Popen[bytes]] = {}  # spawned by this process: reaped so a dead one is not a zombie


STATES = ("connecting", "up", "reconnecting", "down")
# Cloud states in which waiting is pointless: the supervisor writes `down` with this reason and exits.
STOPPED_REASONS = {"stopped": "instance stopped", "stopping": "instance stopped",
                   "shutting-down": "instance terminated", "terminated": "instance terminated",
                   "gone": "instance terminated"}


@dataclass(frozen=True)
class Forward:
    local_port: int
    remote_port: int
    label: str
    remote_host: str = "127.0.0.1"  # as the instance sees it (Instance.jupyter_host)


@dataclass(frozen=True)
class ResolveResult:
    state: str  # the cloud's view: running, pending, stopped, stopping, terminated, gone, unknown
    host: str | None


@dataclass(frozen=True)
class TunnelState:
    """What the state file holds; ``read_state`` returns it, the CLI renders it."""

    name: str
    state: str  # connecting | up | reconnecting | down
    since: str  # ISO UTC of the last change of `state`
    reason: str
    local_ports: dict[str, int] = field(default_factory=dict)
    remote_ports: dict[str, int] = field(default_factory=dict)
    remote_hosts: dict[str, str] = field(default_factory=dict)
    pid: int | None = None  # the supervisor
    ssh_pid: int | None = None
    attempts: int = 0  # ssh attempts since the tunnel was last up (or since start)
    last_up: str | None = None
    instance_state: str | None = None  # last answer of the resolver
    updated: str | None = None
    mode: str | None = None  # resumable (relay streams) | plain (ssh -N -L)
    held_connections: int = 0  # live streams through the local ports (resumable mode)
    resume_window: float | None = None
    last_outage: dict[str, object] | None = None  # the last outage the streams were carried through (or not)
    fallback: str | None = None  # why a resumable tunnel runs plain (the instance cannot run the relay)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, object]) -> TunnelState:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in known})  # type: ignore[arg-type]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- stderr of ssh -> events -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Event:
    # auth; lost (was up, link died); fail (could not reach the server: paced by the probes);
    # reject (reached the server, it said no: backoff); port_busy (a local port is taken: backoff); hostkey (fatal)
    kind: str
    reason: str


HOSTKEY_REASON = "host key verification failed"

_RULES: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(r"^Authenticated to "), "auth", "authenticated"),
    (re.compile(r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED|host key is known for .* "
                r"requested strict checking|Host key for .* has changed"), "hostkey",
     HOSTKEY_REASON + ": the server did not present the pinned host key"),
    (re.compile(r"^Timeout, server .* not responding"), "lost", "link lost: server not responding to keepalives"),
    (re.compile(r"^bind \[?[\d.:a-fA-F]*\]?:(\d+): Address already in use"), "port_busy",
     "local port {0} is in use by another program"),
    (re.compile(r"Could not request local forwarding"), "port_busy", "could not listen on a local port"),
    (re.compile(r"connect to host .* port \d+: Connection refused"), "fail", "connection refused (sshd not running)"),
    (re.compile(r"connect to host .* port \d+: (?:Connection timed out|Operation timed out)"), "fail",
     "connection timed out"),
    (re.compile(r"connect to host .* port \d+: (Network is unreachable|No route to host|Invalid argument|"
                r"Host is unreachable)"), "fail", "network unreachable"),
    (re.compile(r"connect to host .* port \d+: (.*)$"), "fail", "cannot connect: {0}"),
    (re.compile(r"Could not resolve hostname"), "fail", "could not resolve the host name"),
    (re.compile(r"Permission denied \("), "reject", "authentication failed (key not accepted)"),
    (re.compile(r"kex_exchange_identification|banner exchange|Connection timed out during"), "reject",
     "ssh handshake failed"),
    (re.compile(r"Connection (?:closed|reset) by|Connection to .* closed by remote host|Broken pipe|"
                r"client_loop: send disconnect|Received disconnect"),
     "lost", "connection closed by the server"),
]


def classify_line(line: str) -> Event | None:
    """Map one stderr line of ``ssh -o LogLevel=VERBOSE`` to an event; channel-level noise maps to None.

    ``channel N: open failed: connect failed: Connection refused`` means the *remote* port is closed (Jupyter
    restarting), not that the tunnel broke, so only ``connect to host …`` lines count as connect failures.
    """
    line = line.strip()
    if not line or line.startswith("channel "):
        return None
    for pattern, kind, reason in _RULES:
        m = pattern.search(line)
        if m:
            return Event(kind, reason.format(*m.groups()))
    return None


_NOT_FOUND = re.compile(r"python3: (?:command )?not found|python3: No such file or directory|"
                        r"command not found: python3")  # bash / dash / env, zsh
_TOO_OLD = re.compile(r"nbcloud-relay: python (\d+\.\d+) is older than (\d+\.\d+)")


def relay_unavailable(returncode: int | None, stderr_lines: list[str], too_old_code: int = 86) -> str | None:
    """Why the instance cannot run the relay (no python3, or one too old), read from how ``ssh … python3 -c LOADER``
    ended; None for any other failure (a link, auth or relay problem is retried, never answered by a fallback).
    The loader prints its own line and exits ``too_old_code``; a shell without python3 exits 127 saying so."""
    for line in stderr_lines:
        m = _TOO_OLD.search(line)
        if m and returncode == too_old_code:
            return f"python3 on the instance is {m.group(1)}, the relay needs {m.group(2)} or newer"
    if returncode == 127 and any(_NOT_FOUND.search(line) for line in stderr_lines):
        return "the instance has no python3, which the relay needs"
    return None


def build_relay_argv(host_alias: str, ssh_config: Path, remote_command: str, *, keepalive_interval: int,
                     keepalive_count: int, connect_timeout: int, ssh_binary: str = "ssh",
                     ip_qos: str | None = None) -> list[str]:
    """The resumable tunnel's transport: one ssh session running the relay's attach; its stdio carries frames.

    ``ip_qos``: the marking a plain ``ssh -N -L`` would use (the config's interactive IPQoS value). A session without
    a tty is "non-interactive" to ssh, which marks it with the bulk value (throughput / cs1): on Wi-Fi that is the
    background access category, behind everything else, for what is the browser's interactive traffic."""
    qos = ["-o", f"IPQoS={ip_qos}"] if ip_qos else []
    return [ssh_binary, "-F", str(ssh_config), "-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout}",
            "-o", f"ServerAliveInterval={keepalive_interval}", "-o", f"ServerAliveCountMax={keepalive_count}",
            "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=VERBOSE", "-o", "ClearAllForwardings=yes",
            "-o", "ControlPath=none", "-o", "RequestTTY=no", *qos, host_alias, remote_command]


def tunnel_options_from_env(env: dict[str, str] | None = None) -> dict[str, object]:
    """NBCLOUD_TUNNEL_MODE (resumable | plain), NBCLOUD_RESUME_WINDOW and NBCLOUD_HOLD_NEW (seconds)."""
    env = dict(os.environ) if env is None else env
    mode = env.get("NBCLOUD_TUNNEL_MODE", "resumable").strip() or "resumable"
    if mode not in ("resumable", "plain"):
        raise UsageError(f"NBCLOUD_TUNNEL_MODE={mode!r} is not a tunnel mode", "use resumable or plain")
    out: dict[str, object] = {"mode": mode}
    for var, key, default in (("NBCLOUD_RESUME_WINDOW", "resume_window", 600.0),
                              ("NBCLOUD_HOLD_NEW", "hold_new", 60.0)):
        raw = env.get(var, "").strip()
        try:
            value = float(raw) if raw else default
        except ValueError:
            value = -1.0
        if value <= 0:
            raise UsageError(f"{var}={raw!r} is not a number of seconds", f"set {var} to e.g. {default:g}")
        out[key] = value
    return out


def build_ssh_argv(host_alias: str, forwards: list[Forward], ssh_config: Path, *, keepalive_interval: int,
                   keepalive_count: int, connect_timeout: int, ssh_binary: str = "ssh") -> list[str]:
    """The one ssh command line; nothing secret on it (ps shows it to every local user)."""
    argv = [ssh_binary, "-F", str(ssh_config), "-N",
            "-o", "ExitOnForwardFailure=yes", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout}",
            "-o", f"ServerAliveInterval={keepalive_interval}", "-o", f"ServerAliveCountMax={keepalive_count}",
            # Pinned on the command line too, so no config edit can make us accept a different host key.
            "-o", "StrictHostKeyChecking=yes", "-o", "LogLevel=VERBOSE"]
    for fw in forwards:
        argv += ["-L", f"127.0.0.1:{fw.local_port}:{fw.remote_host}:{fw.remote_port}"]
    argv.append(host_alias)
    return argv


def listening_ports() -> set[int] | None:
    """Ports in LISTEN state on 127.0.0.1 per /proc/net/tcp (Linux); None where there is no /proc.

    Read instead of probing with bind(): a bind racing ssh's own bind could make ssh fail its forward.
    """
    try:
        text = Path("/proc/net/tcp").read_text()
    except OSError:
        return None
    ports = set()
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) > 3 and parts[3] == "0A" and parts[1].startswith("0100007F:"):
            ports.add(int(parts[1].split(":")[1], 16))
    return ports




def host_alias_for(name: str) -> str:
    return f"nb-{name}"


def state_path(name: str) -> Path:
    return paths().tunnels_dir / f"{name}.json"


def log_path(name: str) -> Path:
    return paths().tunnels_dir / f"{name}.log"


def _args_path(name: str) -> Path:
    return paths().tunnels_dir / f"{name}.args.json"


# --- local ports -------------------------------------------------------------------------------------------------

def port_is_free(port: int) -> bool:
    """Whether ssh could listen on 127.0.0.1:port (SO_REUSEADDR like ssh: a TIME_WAIT leftover does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _busy(port: int) -> UsageError:
    return UsageError(f"local port {port} is in use by another program", "pass --port P or stop that program")


def pick_local_port(preferred: int | None, default: int = 8888) -> int:
    """``preferred`` if free (else UsageError); with None, ``default`` or the next free port above it."""
    if preferred is not None:
        if not port_is_free(preferred):
            raise _busy(preferred)
        return preferred
    for port in range(default, default + 100):
        if port_is_free(port):
            return port
    with socket.socket() as s:  # 100 busy ports in a row: let the kernel pick
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the detached process ----------------------------------------------------------------------------------------

def _cmdline(pid: int) -> str | None:
    """The process's command line, or None when it is gone (a zombie counts as gone)."""
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        _children.pop(pid, None)
        return None
    proc = Path(f"/proc/{pid}")
    if proc.exists() or sys.platform.startswith("linux"):
        try:
            if ") Z" in (proc / "stat").read_text():
                return None
            return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
    out = subprocess.run(["ps", "-p", str(pid), "-o", "stat=,command="], capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip() or out.stdout.lstrip().startswith("Z"):
        return None
    return out.stdout.strip().split(None, 1)[-1]


def _is_supervisor(pid: int | None) -> bool:
    # Checks the command line, not just the pid: after a reboot the pid may belong to anything.
    if not pid:
        return False
    cmd = _cmdline(pid)
    return cmd is not None and (_ENTRY in cmd or "tunnel-supervisor" in cmd)


def _read_raw(name: str) -> TunnelState | None:
    try:
        return TunnelState.from_dict(json.loads(state_path(name).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def read_state(name: str) -> TunnelState | None:
    """The tunnel's state, or None if there never was one. A dead supervisor reads as ``down``."""
    for pid, child in list(_children.items()):  # reap the supervisors this process started and that ended
        if child.poll() is not None:
            _children.pop(pid, None)
    st = _read_raw(name)
    if st is None or st.state == "down" or _is_supervisor(st.pid):
        return st
    return TunnelState(**{**asdict(st), "state": "down", "reason": "tunnel supervisor is not running",
                          "ssh_pid": None})


def start_supervisor(name: str, forwards: list[Forward], *, host_alias: str | None = None,
                     ssh_config: Path | None = None, resolver: str | None = None, keepalive_interval: int = 2,
                     keepalive_count: int = 2, backoff_max: float = 5.0, connect_timeout: int = 5,
                     options: dict[str, object] | None = None) -> int:
    """Start (or reuse) the detached supervisor for ``name``; returns its pid.

    A live supervisor with the same ports is reused; one with other ports is replaced. ``resolver`` is
    ``"module:function"``, a factory ``f(name) -> Callable[[], ResolveResult]``, passed in by the caller (this
    package never names the use cases); None: no resolver, the supervisor retries the address it has.
    Raises UsageError when a local port is taken by another program.
    ``options`` (mode, resume_window, hold_new) default to :func:`tunnel_options_from_env`.
    """
    opts = tunnel_options_from_env() if options is None else options
    want_local = {f.label: f.local_port for f in forwards}
    want_remote = {f.label: f.remote_port for f in forwards}
    want_hosts = {f.label: f.remote_host for f in forwards}
    current = read_state(name)
    if current is not None and current.state != "down" and _is_supervisor(current.pid):
        same_hosts = (current.remote_hosts or {f.label: "127.0.0.1" for f in forwards}) == want_hosts
        # a resumable tunnel that fell back to plain (the instance cannot run the relay) is what was asked for
        same_mode = (current.mode or "plain") == opts["mode"] or bool(current.fallback and opts["mode"] == "resumable")
        if current.local_ports == want_local and current.remote_ports == want_remote and same_hosts and same_mode:
            return int(current.pid or 0)
        stop_supervisor(name)
    for fw in forwards:
        if not port_is_free(fw.local_port):
            raise _busy(fw.local_port)
    p = paths()
    ensure_private_dir(p.tunnels_dir)
    args = {
        "name": name, "host_alias": host_alias or host_alias_for(name),
        "forwards": [asdict(f) for f in forwards], "ssh_config": str(ssh_config or p.ssh_config),
        "state_file": str(state_path(name)), "log_file": str(log_path(name)), "resolver": resolver,
        "keepalive_interval": keepalive_interval, "keepalive_count": keepalive_count, "backoff_max": backoff_max,
        "connect_timeout": connect_timeout, **opts,
    }
    write_private(_args_path(name), json.dumps(args, indent=2))
    # No stale "down" from a previous run may answer wait_until_up before the new supervisor writes its state.
    state_path(name).unlink(missing_ok=True)
    log = log_path(name)
    if log.exists() and log.stat().st_size > _LOG_ROTATE_BYTES:
        log.replace(log.with_suffix(".log.1"))
    env = dict(os.environ)
    # Make `-m nbcloud.ssh.tunnel` importable from "/" even when nbcloud runs from a source tree.
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen([sys.executable, "-m", _ENTRY, str(_args_path(name))], stdin=subprocess.DEVNULL,
                                stdout=fd, stderr=fd, cwd="/", env=env, start_new_session=True, close_fds=True)
    finally:
        os.close(fd)
    _children[proc.pid] = proc
    return proc.pid


def stop_supervisor(name: str, timeout: float = 5.0) -> bool:
    """Stop the tunnel for ``name``; True when a supervisor was running. Leaves the state ``down``/"disconnected"."""
    st = _read_raw(name)
    if st is None:
        return False
    running = _is_supervisor(st.pid)
    if running and st.pid:
        os.kill(st.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _is_supervisor(st.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _is_supervisor(st.pid):
            os.kill(st.pid, signal.SIGKILL)
    if st.ssh_pid and (_cmdline(st.ssh_pid) or "").startswith("ssh "):
        os.kill(st.ssh_pid, signal.SIGTERM)  # normally gone with the supervisor (PDEATHSIG); not on macOS
    after = _read_raw(name)
    if after is None or after.state != "down":
        base = after or st
        write_private(state_path(name), TunnelState(**{
            **asdict(base), "state": "down", "since": now_iso(), "reason": "disconnected", "ssh_pid": None,
            "updated": now_iso()}).to_json())
    return running


def wait_until_up(name: str, timeout: float) -> TunnelState:
    """Block until the tunnel is up; TunnelError when it goes down or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    st = None
    while True:
        st = read_state(name)
        if st is not None and st.state == "up":
            return st
        if st is not None and st.state == "down":
            if st.reason.startswith(HOSTKEY_REASON):
                raise HostKeyError(f"{name} presented a host key that does not match the one nbcloud pinned; "
                                   "refusing to connect")
            raise TunnelError(f"the tunnel to {name} is down: {st.reason}")
        if time.monotonic() >= deadline:
            why = f" (last: {st.state}, {st.reason})" if st else ""
            raise TunnelError(f"the tunnel to {name} did not come up within {timeout:g} s{why}")
        time.sleep(0.02)


# --- entry point of the detached process: :mod:`nbcloud.ssh.tunnel_process` (it imports the supervisor, which
# imports this module; keeping it there keeps this module below the supervisor). ``-m nbcloud.ssh.tunnel`` stays
# the command line, so `_is_supervisor` knows supervisors started by earlier versions.

if __name__ == "__main__":
    from nbcloud.ssh.tunnel_process import main as _main  # the package's modules, not __main__: one set of classes

    sys.exit(_main())
