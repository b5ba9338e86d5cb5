"""connect, disconnect, sync: the user's side of the link, through the self-healing tunnel."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import local_port_base
from ..errors import ConflictError, Interrupted, RemoteError, UsageError
from ..state import Record
from .context import Context, Progress, no_progress
from .instances import open_in_browser as _open_browser

__all__ = ["ConnectResult", "connect", "disconnect", "fallback_note", "forwards_of", "parse_forward", "sync",
           "tunnel_fields", "tunnel_resolver"]


@dataclass(frozen=True)
class ConnectResult:
    name: str
    url: str
    local_port: int
    tunnel: str
    token_file: str
    gateway_url: str | None = None
    gateway_local_port: int | None = None
    gateway_token: str | None = None
    browser_opened: bool = False
    forwards: list[dict[str, int]] = field(default_factory=list)  # the --forward ports: {remote_port, local_port}
    dashboard_url: str | None = None  # the cluster's dashboard (`nbcloud cluster up`), on the same tunnel
    tunnel_mode: str | None = None  # resumable | plain
    tunnel_note: str | None = None  # one line when the tunnel fell back to plain (the instance cannot run the relay)


FORWARD_PREFIX = "port-"  # label of a --forward in the tunnel's state


def parse_forward(spec: str) -> tuple[int | None, int]:
    """``REMOTE`` or ``LOCAL:REMOTE`` → (local or None, remote); UsageError on anything else."""
    parts = spec.strip().split(":")
    try:
        ports = [int(p) for p in parts]
    except ValueError:
        ports = []
    if len(ports) not in (1, 2) or not all(0 < p < 65536 for p in ports):
        raise UsageError(f"--forward {spec!r} is not REMOTE or LOCAL:REMOTE",
                         "e.g. `--forward 6006` or `--forward 16006:6006`")
    return (ports[0], ports[1]) if len(ports) == 2 else (None, ports[0])


def forwards_of(local_ports: dict[str, int], remote_ports: dict[str, int]) -> list[dict[str, int]]:
    """The --forward entries of a tunnel's state, sorted by remote port."""
    return sorted(({"remote_port": remote_ports[k], "local_port": v} for k, v in local_ports.items()
                   if k.startswith(FORWARD_PREFIX) and k in remote_ports), key=lambda f: f["remote_port"])


def tunnel_fields(ctx: Context, record: Record) -> dict[str, Any]:
    from ..ssh.tunnel import read_state

    state = read_state(record.name)
    live = state is not None and state.state != "down"
    return {
        "tunnel": state.state if state else "down",
        "tunnel_since": state.since if state else None,
        "local_port": record.local_port,
        "held_connections": state.held_connections if state and live else 0,
        "forwards": forwards_of(state.local_ports, state.remote_ports) if state and live else [],
        "last_outage": state.last_outage if state else None,
        "tunnel_mode": state.mode if state and live else None,
        "tunnel_fallback": state.fallback if state and live else None,
    }


#: what the detached supervisor calls to follow the instance (ssh/ is handed it: it never imports ops/)
RESOLVER = f"{__name__}:tunnel_resolver"


def tunnel_resolver(name: str) -> Callable[[], Any]:
    """The supervisor's window on the cloud: state and (new) address, with the ssh entry and SG kept current.

    An instance that is gone takes the local lab pointing at it along (the supervisor itself then exits). A sandbox
    that is not running is never started from here: its instances are gone with it.
    """
    from ..errors import NotFoundError
    from ..providers.registry import SandboxNotRunning
    from ..ssh.tunnel import ResolveResult
    from .instances import refresh
    from .locallab import stop_lab

    ctx = Context.create()

    def resolve() -> ResolveResult:
        try:
            instance = refresh(ctx, name)
        except (SandboxNotRunning, NotFoundError):  # the sandbox reset, or `down` forgot the record meanwhile
            instance = None
        except Exception:  # the cloud API unreachable is not the instance gone: keep trying
            return ResolveResult(state="unknown", host=None)
        if instance is None:
            with contextlib.suppress(OSError):
                stop_lab(ctx, name, require_record=False)
            return ResolveResult(state="gone", host=None)
        return ResolveResult(state=instance.state, host=instance.host)

    return resolve


def _choose_port(ctx: Context, record: Record, wanted: int | None, field: str, default: int) -> int:
    from ..ssh.tunnel import port_is_free

    remembered = getattr(record, field)
    if wanted is not None:
        if not port_is_free(wanted) and wanted != remembered:
            raise UsageError(f"local port {wanted} is in use by another program", "pick another with --port P")
        return wanted
    if remembered:
        return remembered
    taken = ctx.store.ports_in_use()
    port = default
    while port in taken or not port_is_free(port):
        port += 1
    return port


def _extra_forwards(ctx: Context, name: str, specs: list[str] | None, taken: set[int],
                    host: str) -> list[Any]:
    """The --forward ports as Forwards; with no --forward, the ones the running tunnel already carries."""
    from ..ssh.tunnel import Forward, port_is_free, read_state

    if specs is None:
        current = read_state(name)
        if current is None or current.state == "down":
            return []
        return [Forward(f["local_port"], f["remote_port"], f"{FORWARD_PREFIX}{f['local_port']}", host)
                for f in forwards_of(current.local_ports, current.remote_ports)]
    current = read_state(name)
    ours = set(current.local_ports.values()) if current is not None and current.state != "down" else set()
    out = []
    for spec in specs:
        local, remote = parse_forward(spec)
        if local is None:
            local = remote
            while local in taken or (local not in ours and not port_is_free(local)):
                local += 1
        elif local in taken or (local not in ours and not port_is_free(local)):
            raise UsageError(f"local port {local} is in use", f"pick another: `--forward OTHER:{remote}`")
        taken.add(local)
        out.append(Forward(local, remote, f"{FORWARD_PREFIX}{local}", host))  # local ports are unique
    return out


def connect(ctx: Context, name: str, *, port: int | None = None, open_browser: bool = True,
            progress: Progress = no_progress, timeout: float = 60,
            forward: list[str] | None = None) -> ConnectResult:
    from ..ssh.tunnel import Forward, read_state, start_supervisor, stop_supervisor, wait_until_up
    from .instances import GATEWAY_PORT, JUPYTER_PORT, require_running, token_path
    from .instances import stored_spec as _spec
    from .public import reissue_tls_if_moved

    record = ctx.record(name)
    ctx.key_path(name)
    instance = require_running(ctx, name)
    spec = _spec(record)
    if spec.public:
        # started outside nbcloud (e.g. the AWS console), it came back on an address its certificate does not name
        reissue_tls_if_moved(ctx, name, instance.host, progress=progress)
        return _connect_public(ctx, name, instance.host or "", open_browser, progress, timeout)
    current = read_state(name)
    was_running = current is not None and current.state != "down"
    if port is not None and was_running and record.local_port != port:
        stop_supervisor(name)
        was_running = False
    local_port = _choose_port(ctx, record, port, "local_port", local_port_base())
    # to where the provider says Jupyter listens on the instance (127.0.0.1, or the instance's own address)
    forwards = [Forward(local_port, JUPYTER_PORT, "jupyter", instance.jupyter_host)]
    gateway_port = None
    if spec.gateway:
        gateway_port = _choose_port(ctx, record, None, "gateway_local_port", local_port + 1000)
        forwards.append(Forward(gateway_port, GATEWAY_PORT, "gateway", instance.jupyter_host))
    from .cluster import dashboard_forward

    dashboard = dashboard_forward(ctx, name, local_port)
    if dashboard is not None:
        forwards.append(Forward(dashboard[0], dashboard[1], "dashboard", instance.jupyter_host))
    extra = _extra_forwards(ctx, name, forward, {f.local_port for f in forwards}, instance.jupyter_host)
    forwards += extra
    ctx.store.update(name, local_port=local_port, gateway_local_port=gateway_port)
    progress(f"tunnel 127.0.0.1:{local_port} → {name}:{JUPYTER_PORT}")
    start_supervisor(name, forwards, resolver=RESOLVER)
    try:
        state = wait_until_up(name, timeout)
    except KeyboardInterrupt as stop:
        if was_running:
            raise  # the tunnel the user had before this connect stays
        # a Ctrl-C while waiting means "don't connect": the tunnel started here must not run on unannounced
        stop_supervisor(name)
        raise Interrupted(f"interrupted — stopped the tunnel to {name} that this connect had started",
                          f"`nbcloud connect {name}` to try again") from stop
    token = token_path(ctx, name).read_text().strip()
    url = f"http://127.0.0.1:{local_port}/lab?token={token}"
    opened = open_browser and _open_browser(url)
    gateway_url = f"http://127.0.0.1:{gateway_port}" if gateway_port else None
    gateway_token = _gateway_token(ctx, name) if gateway_port else None
    return ConnectResult(name=name, url=url, local_port=local_port, tunnel=state.state,
                         token_file=str(token_path(ctx, name)), gateway_url=gateway_url,
                         gateway_local_port=gateway_port, gateway_token=gateway_token, browser_opened=opened,
                         forwards=[{"remote_port": f.remote_port, "local_port": f.local_port} for f in extra],
                         dashboard_url=f"http://127.0.0.1:{dashboard[0]}/status" if dashboard else None,
                         tunnel_mode=state.mode, tunnel_note=fallback_note(state.fallback))


def fallback_note(fallback: str | None) -> str | None:
    """The one line `connect` says when the tunnel runs plain although resumable was asked for."""
    if not fallback:
        return None
    return (f"plain tunnel: {fallback}; connections will not outlive an outage (install python3 >= 3.9 on the "
            "instance, then `nbcloud disconnect` and `connect` again)")


def _connect_public(ctx: Context, name: str, host: str, open_browser: bool, progress: Progress,
                    timeout: float) -> ConnectResult:
    """Public mode: no tunnel; Jupyter is checked over https against the pinned certificate, then its URL given."""
    import time

    from .instances import JUPYTER_PORT, token_path
    from .public import cert_path, fetch_verified, pinned_fingerprint

    fingerprint = pinned_fingerprint(ctx, name)
    if not fingerprint:
        raise ConflictError(f"no pinned certificate for {name!r} on this machine",
                            f"re-create it: `nbcloud down {name}` then `nbcloud up {name} --public`")
    base = f"https://{host}:{JUPYTER_PORT}"
    progress(f"checking {base} (certificate pinned, sha256 {fingerprint[:23]}…)")
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = fetch_verified(f"{base}/api", fingerprint, timeout=10).status
            if status == 200:
                break
            problem = f"HTTP {status}"
        except OSError as exc:  # not listening yet, or the network in between; a wrong certificate raises at once
            problem = str(exc)
        if time.monotonic() >= deadline:
            raise RemoteError(f"Jupyter on {name} does not answer at {base}: {problem}",
                              f"`nbcloud logs {name}` shows the server log; `nbcloud status {name}`")
        time.sleep(1)
    url = f"{base}/lab"
    opened = open_browser and _open_browser(url)
    progress(f"log in with your password; the certificate is {cert_path(ctx, name)}")
    return ConnectResult(name=name, url=url, local_port=JUPYTER_PORT, tunnel="none",
                         token_file=str(token_path(ctx, name)), browser_opened=opened)


def _gateway_token(ctx: Context, name: str) -> str | None:
    path = ctx.paths.secrets_dir / f"{name}.gateway-token"
    return path.read_text().strip() if path.exists() else None


def disconnect(ctx: Context, name: str) -> dict[str, str]:
    from ..ssh.tunnel import stop_supervisor

    ctx.record(name)
    stop_supervisor(name)
    return {"name": name, "tunnel": "down"}


def git_ignored(folder: Path) -> list[str] | None:
    """What git ignores under ``folder`` (paths relative to it, ignored folders as ``dir/``), or None outside git.

    git's own answer, so negations (``*.log`` then ``!keep.log``), nested and global ignore files all count.
    """
    git = shutil.which("git")
    if git is None:
        return None
    try:
        inside = subprocess.run([git, "rev-parse", "--is-inside-work-tree"], cwd=folder, capture_output=True,
                                text=True, timeout=30)
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return None
        listed = subprocess.run([git, "ls-files", "--others", "--ignored", "--exclude-standard", "--directory",
                                 "-z"], cwd=folder, capture_output=True, check=True, timeout=300)
    except (OSError, subprocess.SubprocessError):
        return None
    return [p for p in listed.stdout.decode(errors="surrogateescape").split("\0") if p]


def _anchored(path: str) -> str:
    """An rsync exclude matching exactly ``path`` (from the transfer root): wildcard characters escaped."""
    escaped = "".join("\\" + c if c in "*?[\\" else c for c in path)
    return "/" + escaped


def rsync_argv(rsync: str, ssh: str, local: Path, endpoint: str, *, pull: bool, delete: bool,
               git_ignored: list[str] | None) -> tuple[list[str], bytes | None]:
    """The rsync command line (and what to feed its stdin) for one sync.

    In a git work tree, git's list of ignored paths becomes rsync's excludes (read NUL-separated from stdin), so
    what is pushed is what git would track; elsewhere rsync reads each folder's `.gitignore` itself (no
    negations). Excluded paths are also kept from ``--delete`` on the receiving side, as before.
    """
    argv = [rsync, "-az", "--exclude=.git/", "-e", ssh]
    stdin = None
    if git_ignored is None:
        argv.insert(2, "--filter=:- .gitignore")
    else:
        argv += ["--from0", "--exclude-from=-"]
        stdin = b"".join(_anchored(p).encode(errors="surrogateescape") + b"\0" for p in git_ignored)
    if delete:
        argv.append("--delete")
    argv += [endpoint, f"{local}/"] if pull else [f"{local}/", endpoint]
    return argv, stdin


@dataclass(frozen=True)
class SyncResult:
    name: str
    local: str
    remote: str
    direction: str


def sync(ctx: Context, name: str, path: Path, *, pull: bool = False, remote: str | None = None,
         delete: bool = False) -> SyncResult:
    """rsync over the instance's ssh entry; `.gitignore` rules are honoured (git's own answer in a work tree)."""
    rsync = shutil.which("rsync")
    if not rsync:
        raise UsageError("rsync is not installed",
                         "install it (Debian/Ubuntu: apt install rsync; macOS: brew install rsync)")
    ctx.record(name)
    local = path.expanduser().resolve()
    if not pull and not local.is_dir():
        raise UsageError(f"{path} is not a folder", "pass the folder to push, e.g. `nbcloud sync NAME .`")
    target = remote or f"~/{local.name}"
    ssh = f"ssh -F {ctx.paths.ssh_config} -o BatchMode=yes"
    endpoint = f"nb-{name}:{target.rstrip('/')}/"
    ignored = None if pull else git_ignored(local)
    argv, stdin = rsync_argv(rsync, ssh, local, endpoint, pull=pull, delete=delete, git_ignored=ignored)
    if pull:
        local.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(argv, input=stdin, capture_output=True, timeout=3600)
    if done.returncode != 0:
        raise RemoteError(f"rsync failed: {(done.stderr.decode(errors='replace').strip().splitlines() or ['?'])[-1]}",
                          f"check `ssh nb-{name}` works; `nbcloud status {name}`")
    return SyncResult(name, str(local), target, "pull" if pull else "push")
