"""Gateway mode's local half: JupyterLab on the laptop, its kernels behind a Kernel Gateway on the instance.

:func:`check_gateway`, :func:`start_local_lab` and :func:`stop_local_lab` know nothing about instances: they take
a gateway URL and token (tests drive them against a gateway on 127.0.0.1). :func:`stop_lab` stops the one of an
instance by name; it sits here, below the use cases, because forgetting an instance stops its lab
(:func:`nbcloud.ops.instances.stop_tunnel`). The use cases are in :mod:`nbcloud.ops.gateway`.
Tokens travel only through environment variables and 0600 files, never on a command line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import ensure_private_dir, local_port_base, write_private
from ..errors import ConflictError, UsageError
from .context import Context, Progress, no_progress

__all__ = [
    "EXPECTED_GATEWAY",
    "GatewayInfo",
    "LabResult",
    "check_gateway",
    "check_versions",
    "lab_argv",
    "lab_files",
    "read_lab_state",
    "require_lab",
    "start_local_lab",
    "stop_lab",
    "stop_local_lab",
]

EXPECTED_GATEWAY = "jupyter-kernel-gateway 3.0.x"
DEFAULT_LAB_PORT = 8890
INSTALL_LAB = "pip install 'nbcloud[lab]'"


@dataclass(frozen=True)
class GatewayInfo:
    url: str
    server_version: str  # the jupyter_server version the gateway runs on (its `/api`)
    kernelspecs: tuple[str, ...]
    default_kernel: str | None


@dataclass(frozen=True)
class LabResult:
    name: str | None
    url: str  # with the local server's token
    local_port: int
    root_dir: str
    gateway_url: str
    pid: int
    log_file: str
    reused: bool = False
    browser_opened: bool = False
    kernelspecs: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------------- HTTP checks


def _get(url: str, token: str | None, timeout: float) -> tuple[int, bytes]:
    """(status, body); an HTTP error status is a result, a refused/reset connection raises OSError."""
    headers = {"Authorization": f"token {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read() or b""
    except urllib.error.URLError as exc:
        raise OSError(str(exc.reason)) from exc


def _local_server_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jupyter_server")
    except PackageNotFoundError as exc:
        raise UsageError("JupyterLab is not installed on this machine", INSTALL_LAB) from exc


def check_versions(gateway_version: str, local_version: str) -> None:
    """The gateway's jupyter_server and the local one must share a major version (KG 3.0.x runs on 2.x)."""
    def major(text: str) -> str:
        return text.split(".", 1)[0]

    if major(gateway_version) != major(local_version):
        raise UsageError(
            f"version mismatch: the gateway runs on Jupyter server {gateway_version}, this machine has "
            f"jupyter_server {local_version} (expected {EXPECTED_GATEWAY} on jupyter_server {major(local_version)}.x)",
            f"upgrade the instance's gateway (`nbcloud gateway NAME`) or this machine's Jupyter ({INSTALL_LAB})")


def check_gateway(url: str, token: str, *, wait: float = 20.0, name: str = "NAME") -> GatewayInfo:
    """Ask the gateway for its version and kernel specs; one clear error for each way it can be wrong."""
    url = url.rstrip("/")
    deadline = time.monotonic() + wait
    not_there = UsageError(
        f"no Kernel Gateway answers at {url} (expected {EXPECTED_GATEWAY} as nbcloud-gateway.service on {name})",
        f"`nbcloud gateway {name}` installs and starts it; `nbcloud logs {name}` shows the instance's logs")
    while True:
        try:
            status, body = _get(f"{url}/api", token, timeout=5)
            break
        except OSError:  # refused, or the tunnel accepted and the far side closed: the service may be starting
            if time.monotonic() > deadline:
                raise not_there from None
            time.sleep(0.5)
    if status in (401, 403):
        raise UsageError(f"the Kernel Gateway at {url} refused nbcloud's token ({status})",
                         f"`nbcloud gateway {name}` installs a fresh token on the instance")
    try:
        version = str(json.loads(body)["version"])
    except (ValueError, KeyError, TypeError):
        raise not_there from None
    check_versions(version, _local_server_version())
    try:
        status, body = _get(f"{url}/api/kernelspecs", token, timeout=30)
    except OSError:
        raise not_there from None
    if status in (401, 403):
        raise UsageError(f"the Kernel Gateway at {url} refused nbcloud's token ({status})",
                         f"`nbcloud gateway {name}` installs a fresh token on the instance")
    if status != 200:
        raise not_there
    specs = json.loads(body)
    return GatewayInfo(url=url, server_version=version, kernelspecs=tuple(sorted(specs.get("kernelspecs", {}))),
                       default_kernel=specs.get("default"))


# ------------------------------------------------------------------------------------------ the local lab process


def require_lab() -> None:
    import importlib.util

    try:
        missing = any(importlib.util.find_spec(m) is None for m in ("jupyterlab", "jupyter_server"))
    except (ImportError, ValueError):
        missing = True
    if missing:
        raise UsageError("JupyterLab is not installed on this machine", INSTALL_LAB)


def lab_argv(root_dir: Path, port: int, gateway_url: str, python: str = sys.executable) -> list[str]:
    """The local server's command line: nothing secret in it (``ps`` shows it to every user)."""
    argv = [python, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root_dir}", f"--gateway-url={gateway_url}",
            # no calls home from the laptop's lab: news feed, update check, extension manager's index
            "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
            # one upstream session per browser websocket, and no orphan left open on the gateway (see the module)
            "--ServerApp.kernel_websocket_connection_class="
            "nbcloud.gateway_websocket.IsolatedGatewayWebSocketConnection"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv.append("--allow-root")  # Jupyter refuses root otherwise
    return argv


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_port(avoid: set[int], start: int | None = None) -> int:
    port = start if start is not None else local_port_base() + DEFAULT_LAB_PORT - 8888
    while port in avoid or not _port_free(port):
        port += 1
    return port


def _alive(pid: int, port: int) -> bool:
    """``pid`` is running and is the lab we started on ``port`` (not a recycled pid)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child and has exited
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            return False
    except OSError:  # no /proc (macOS)
        done = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
        cmdline = done.stdout
    return "jupyterlab" in cmdline and f"--ServerApp.port={port}" in cmdline


def read_lab_state(state_file: Path) -> dict[str, Any] | None:
    """The recorded lab if its process is still alive; a stale record is removed."""
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None
    if not _alive(int(state.get("pid", 0)), int(state.get("port", 0))):
        state_file.unlink(missing_ok=True)
        return None
    return state


@contextlib.contextmanager
def _locked(state_file: Path):
    ensure_private_dir(state_file.parent)
    fd = os.open(state_file.with_suffix(".lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _from_state(state: dict[str, Any], **extra: Any) -> LabResult:
    known = LabResult.__dataclass_fields__
    return LabResult(**{k: v for k, v in state.items() if k in known}, **extra)


def _log_tail(log_file: Path, lines: int = 3) -> str:
    try:
        text = log_file.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def start_local_lab(*, state_file: Path, log_file: Path, root_dir: Path, gateway_url: str, gateway_token: str,
                    port: int | None = None, avoid_ports: set[int] | None = None, name: str | None = None,
                    timeout: float = 90.0, progress: Progress = no_progress) -> LabResult:
    """Start (or reuse) a detached local JupyterLab in ``root_dir`` whose kernels run behind ``gateway_url``."""
    require_lab()
    root_dir = root_dir.expanduser().resolve()
    if not root_dir.is_dir():
        raise UsageError(f"{root_dir} is not a folder", "pass your notebooks' folder: `nbcloud lab NAME PATH`")
    gateway_url = gateway_url.rstrip("/")
    with _locked(state_file):
        state = read_lab_state(state_file)
        if state is not None:
            same_place = state["root_dir"] == str(root_dir) and port in (None, state["port"])
            if same_place and state["gateway_url"] == gateway_url:
                return _from_state(state, reused=True)
            if not same_place:
                raise ConflictError(
                    f"a local JupyterLab for this instance already runs in {state['root_dir']} on port "
                    f"{state['port']}", f"open {state['url']}, or stop it first with `nbcloud lab {name} --stop`")
            progress("the gateway moved to another local port: restarting the local JupyterLab")
            _terminate(state)
        if port is not None and not _port_free(port):
            raise UsageError(f"local port {port} is in use by another program", "pick another with --port P")
        port = port or _pick_port(avoid_ports or set())
        token = secrets.token_urlsafe(32)
        token_file = state_file.with_suffix(".token")
        write_private(token_file, token)
        env = dict(os.environ)
        env.pop("JUPYTER_TOKEN", None)
        env.update(JUPYTER_TOKEN_FILE=str(token_file), JUPYTER_GATEWAY_AUTH_TOKEN=gateway_token)
        ensure_private_dir(log_file.parent)
        progress(f"starting JupyterLab on 127.0.0.1:{port} in {root_dir}")
        with open(log_file, "ab") as log:
            os.chmod(log_file, 0o600)
            proc = subprocess.Popen(lab_argv(root_dir, port, gateway_url), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=root_dir, env=env, start_new_session=True)
        result = LabResult(name=name, url=f"http://127.0.0.1:{port}/lab?token={token}", local_port=port,
                           root_dir=str(root_dir), gateway_url=gateway_url, pid=proc.pid, log_file=str(log_file))
        record = {k: v for k, v in asdict(result).items() if k not in ("reused", "browser_opened", "kernelspecs")}
        write_private(state_file, json.dumps(record | {"port": port}, indent=2, sort_keys=True))
        try:
            _wait_ready(proc, port, token, timeout, log_file)
        except BaseException:
            _terminate({"pid": proc.pid, "port": port})
            state_file.unlink(missing_ok=True)
            raise
        proc.returncode = 0  # detached on purpose: keep Popen.__del__ from warning about a running child
        return result


def _wait_ready(proc: subprocess.Popen[bytes], port: int, token: str, timeout: float, log_file: Path) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/api/status?no_track_activity=1"
    while True:
        if proc.poll() is not None:
            raise UsageError(f"the local JupyterLab exited ({proc.returncode}): {_log_tail(log_file)}",
                             f"its log is {log_file}")
        with contextlib.suppress(OSError):
            if _get(url, token, timeout=2)[0] == 200:
                return
        if time.monotonic() > deadline:
            raise UsageError(f"the local JupyterLab did not answer within {timeout:g} s: {_log_tail(log_file)}",
                             f"its log is {log_file}")
        time.sleep(0.2)


def _terminate(state: dict[str, Any], grace: float = 15.0) -> None:
    pid, port = int(state["pid"]), int(state["port"])
    if not _alive(pid, port):
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)  # its own session: the group is the lab and whatever it started
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid, port):
                return
            time.sleep(0.1)


def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    """Return once the pid is really gone (its /proc entry can outlive the command line check while it exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # started by this process: reap it, leave no zombie
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)


def stop_local_lab(state_file: Path) -> dict[str, Any]:
    with _locked(state_file):
        state = read_lab_state(state_file)
        if state is not None:
            _terminate(state)
            _wait_gone(int(state["pid"]))
        state_file.unlink(missing_ok=True)
        state_file.with_suffix(".token").unlink(missing_ok=True)
    return {"stopped": state is not None, "pid": state["pid"] if state else None}


def lab_files(ctx: Context, name: str) -> tuple[Path, Path]:
    directory = ctx.paths.data_dir / "lab"
    return directory / f"{name}.json", directory / f"{name}.log"


def stop_lab(ctx: Context, name: str, *, require_record: bool = True) -> dict[str, Any]:
    """Stop the local lab of ``name``; without ``require_record``, also one whose record is already forgotten."""
    if require_record:
        ctx.record(name)
    return {"name": name, **stop_local_lab(lab_files(ctx, name)[0])}
