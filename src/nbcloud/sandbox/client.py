"""The sandbox as a library: start (idempotent), load_info (cheap), status, reset, faults.

Used by the CLI (``nbcloud sandbox ...``), the tests' fixtures and the aws provider when it runs on the sandbox.

Two modes (:func:`select_mode`): ``netns`` when we are root and have the tools (namespaces, veth, a real sshd
on port 22), else ``loopback`` (loopback.py: 127.x addresses, an unprivileged sshd, no link faults).
``NBCLOUD_SANDBOX_MODE=netns|loopback`` forces one. A third, opt-in: ``os`` (``sandbox start --os`` or
``NBCLOUD_SANDBOX_MODE=os``, root): netns mode's network with each instance a container booting a real OS
(nspawn.py), from the image ``nbcloud sandbox image build`` makes once per machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ensure_private_dir, paths
from ..errors import NotFoundError, SandboxError, UsageError
from .wheelhouse import INSTANCE_PYTHON, INSTANCE_UV_CACHE, ensure_uv_cache, ensure_wheelhouse, warm_uv_cache

__all__ = [
    "CREDENTIALS",
    "DEFAULT_SUBNET",
    "FAULT_KINDS",
    "MODE_ENV",
    "SandboxInfo",
    "aws_cli_command",
    "default_dir",
    "fault",
    "fault_api",
    "load_info",
    "reset",
    "select_mode",
    "start",
    "status",
]

DEFAULT_SUBNET = "10.200.0.0/16"
FAULT_KINDS = ("link-down", "link-up", "reboot", "spot-notice")
SRC_DIR = str(Path(__file__).resolve().parents[2])  # the directory holding the nbcloud package
INSIDE = "/mnt/nbcloud-sandbox"
MODE_ENV = "NBCLOUD_SANDBOX_MODE"
NETNS_TOOLS = ("ip", "nft", "unshare")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class SandboxInfo:
    endpoint_url: str
    region: str
    control_url: str
    caller_ip: str
    subnet: str
    mode: str
    sandbox_dir: Path
    bootstrap_env: dict[str, str] = field(default_factory=dict)
    pid: int = 0
    prefix: str = ""
    mode_reason: str = ""
    login_user: str = "ubuntu"
    ssh_port: int = 22
    # loopback: instances share the host's network, so Jupyter listens on the instance's own address (not
    # 127.0.0.1), and there are no mounts for data volumes
    jupyter_on_address: bool = False
    data_volumes: bool = True

    @property
    def checkip_url(self) -> str:
        return f"{self.control_url}/checkip"

    @property
    def aws_cli(self) -> str:
        return aws_cli_command(self.endpoint_url, self.region)


#: What nbcloud signs the sandbox's API calls with: moto accepts any key, but boto3 and the AWS CLI want one.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def aws_cli_command(endpoint_url: str, region: str) -> str:
    """The AWS CLI line that reads the sandbox (shown by `sandbox start`/`status`): without credentials the CLI
    stops at "Unable to locate credentials", and without the endpoint it would ask real AWS."""
    keys = " ".join(f"{k}={v}" for k, v in CREDENTIALS.items())
    return f"{keys} aws --endpoint-url {endpoint_url} --region {region} ec2 describe-instances"


def default_dir() -> Path:
    return paths().sandbox_dir


def _loopback_bootstrap_env(directory: Path, raw: dict[str, Any]) -> dict[str, str]:
    """The bootstrap's package source for loopback instances: host paths (no mounts), the sandbox's wheelhouse,
    and the machine-wide uv cache itself (instances run as us: they may write it, and uv locks it)."""
    if not raw.get("wheelhouse"):
        return {}
    return {
        "NBCLOUD_UV": str(directory / "shared" / "bin" / "uv"),
        "NBCLOUD_PYTHON": INSTANCE_PYTHON,
        "NBCLOUD_FIND_LINKS": str(raw["wheelhouse"]),
        "NBCLOUD_NO_INDEX": "1",
        "NBCLOUD_COMPILE_BYTECODE": "0",  # loopback instances share this machine's CPU (see _bootstrap_env)
        "UV_CACHE_DIR": str(raw.get("uv_cache") or directory / "shared" / "uv-cache"),
    }


def _bootstrap_env() -> dict[str, str]:
    return {
        "NBCLOUD_UV": f"{INSIDE}/bin/uv",
        "NBCLOUD_PYTHON": "/usr/bin/python3",
        "NBCLOUD_FIND_LINKS": f"{INSIDE}/wheelhouse",
        "NBCLOUD_NO_INDEX": "1",
        # the background byte-compile (~7 s of CPU per instance) would load this one machine for every `up` of a
        # test run; tests/integration/test_bootstrap_local.py runs it
        "NBCLOUD_COMPILE_BYTECODE": "0",
        "UV_CACHE_DIR": INSTANCE_UV_CACHE,
    }


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            # a daemon started before the emulator left providers/ ran as nbcloud.providers.sandbox.daemon
            return b"sandbox.daemon" in fh.read()
    except OSError:
        return False


def load_info(sandbox_dir: Path | None = None) -> SandboxInfo | None:
    """The running sandbox's facts from ``sandbox.json``, or None when no daemon is alive there."""
    directory = Path(sandbox_dir or default_dir())
    try:
        raw = json.loads((directory / "sandbox.json").read_text())
    except (OSError, ValueError):
        return None
    if not _alive(int(raw.get("pid", 0))):
        return None
    return SandboxInfo(
        endpoint_url=raw["endpoint_url"], region=raw["region"], control_url=raw["control_url"],
        caller_ip=raw["caller_ip"], subnet=raw["subnet"], mode=raw["mode"], sandbox_dir=directory,
        bootstrap_env=(_bootstrap_env() if raw["mode"] in ("netns", "os")
                       else _loopback_bootstrap_env(directory, raw)),
        pid=int(raw["pid"]), prefix=raw.get("prefix", ""), mode_reason=raw.get("mode_reason", ""),
        login_user=raw.get("login_user", "ubuntu"), ssh_port=int(raw.get("ssh_port", 22)),
        jupyter_on_address=raw["mode"] == "loopback", data_volumes=raw["mode"] != "loopback",
    )


def _request(info: SandboxInfo, method: str, path: str, body: dict[str, Any] | None = None,
             timeout: float = 30.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(info.control_url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", str(exc))
        except ValueError:
            message = str(exc)
        if exc.code == 404:
            raise NotFoundError(message, "`nbcloud sandbox status` lists the sandbox's instances") from exc
        raise SandboxError(message) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise SandboxError(f"the sandbox daemon at {info.control_url} does not answer: {exc}") from exc


def select_mode() -> tuple[str, str]:
    """(mode, why): netns when root with the tools, else loopback; ``$NBCLOUD_SANDBOX_MODE`` forces one (``os``
    is never chosen by itself: it needs the image, built on purpose)."""
    forced = os.environ.get(MODE_ENV, "").strip().lower()
    if forced not in ("", "auto", "netns", "loopback", "os"):
        raise UsageError(f"{MODE_ENV}={forced} is not a sandbox mode", "use netns, loopback, os or auto")
    if forced == "os":
        if os.geteuid() != 0:
            raise SandboxError(f"{MODE_ENV}=os needs root (namespaces, overlay mounts, systemd-nspawn)",
                               "run it as root, or unset it to use loopback mode")
        return "os", f"{MODE_ENV}=os"
    if forced == "loopback":
        return "loopback", f"{MODE_ENV}=loopback"
    if os.geteuid() != 0:
        if forced == "netns":
            raise SandboxError(f"{MODE_ENV}=netns needs root (network namespaces, veth links, routes)",
                               "run it as root, or unset it to use loopback mode")
        return "loopback", "not root"
    missing = [tool for tool in NETNS_TOOLS if shutil.which(tool) is None]
    if missing and forced != "netns":
        return "loopback", f"no {', '.join(missing)}"
    return "netns", f"{MODE_ENV}=netns" if forced else "root"


SANDBOX_EXTRA = ("moto", "yaml", "werkzeug")  # what the daemon imports from the [sandbox] extra


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules (blocked)
        return False


def _check_extra() -> None:
    missing = [m for m in SANDBOX_EXTRA if not _installed(m)]
    if missing:
        raise UsageError(f"the sandbox needs the [sandbox] extra ({', '.join(missing)} not installed)",
                         "pip install 'nbcloud[sandbox]'")


def _check_requirements(mode: str) -> None:
    missing = ([tool for tool in (*NETNS_TOOLS, "ssh-keygen") if shutil.which(tool) is None]
               if mode in ("netns", "os") else [])
    if mode == "os":
        from .osimage import image_info, missing_tools

        missing += missing_tools()
        if not missing and image_info() is None:
            raise SandboxError("os mode boots the sandbox's instance image, which is not built on this machine",
                               "build it once: `nbcloud sandbox image build` (a few minutes)")
    if not os.path.exists("/usr/sbin/sshd"):
        missing.append("/usr/sbin/sshd")
    if missing:
        raise SandboxError(
            f"the sandbox needs {', '.join(missing)}",
            "install them: `apt-get install -y openssh-server iproute2 nftables util-linux sudo`",
        )
    if mode == "loopback":
        from .loopback import login_user

        try:
            user = login_user()
        except ValueError as exc:
            raise SandboxError(f"loopback mode logs instances in as you, but {exc}") from None
        if os.path.basename(user.pw_shell or "") in ("nologin", "false", ""):
            raise SandboxError(f"loopback mode logs instances in as you ({user.pw_name}), whose shell is "
                               f"{user.pw_shell or 'empty'}: sshd cannot run commands for it",
                               "run it as a user with a login shell, or as root for netns mode")


def _check_subnet_free(subnet: str, directory: Path) -> None:
    from .hosts import SubnetBusy, lock_subnet

    try:
        os.close(lock_subnet(subnet, f"{directory} (starting)"))
    except SubnetBusy as exc:
        raise SandboxError(str(exc), "use another subnet: NBCLOUD_SANDBOX_SUBNET=10.210.0.0/16") from exc


def _subnet(value: str | None = None) -> str:
    import ipaddress

    subnet = value or os.environ.get("NBCLOUD_SANDBOX_SUBNET") or DEFAULT_SUBNET
    try:
        net = ipaddress.ip_network(subnet, strict=False)
    except ValueError as exc:
        raise UsageError(f"NBCLOUD_SANDBOX_SUBNET={subnet} is not a network", "e.g. 10.200.0.0/16") from exc
    if net.version != 4 or net.prefixlen > 28 or not net.is_private:
        raise UsageError(f"NBCLOUD_SANDBOX_SUBNET={subnet} must be a private IPv4 network, /28 or larger",
                         "e.g. 10.200.0.0/16")
    return str(net)


def start(sandbox_dir: Path | None = None, progress: Progress | None = None, timeout: float = 60.0,
          subnet: str | None = None, os_mode: bool = False) -> SandboxInfo:
    """Start the sandbox daemon unless one is running in ``sandbox_dir``; wait until it answers.

    ``subnet`` defaults to ``$NBCLOUD_SANDBOX_SUBNET`` or 10.200.0.0/16; one live sandbox per subnet.
    """
    say = progress or (lambda _msg: None)
    directory = Path(sandbox_dir or default_dir()).resolve()
    info = _running(directory, os_mode)
    if info is not None:
        return info
    mode, mode_reason, subnet = _preflight(subnet, os_mode)  # refusals leave no directory behind
    ensure_private_dir(directory)
    # One start at a time per directory: a second concurrent `sandbox start` found no daemon yet, started its own,
    # and that one died on the first one's subnet (exit 2). It now waits and answers with the first one's daemon.
    with open(directory / "start.lock", "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("waiting for another `nbcloud sandbox start` of this sandbox")
            fcntl.flock(lock, fcntl.LOCK_EX)
        info = _running(directory, os_mode)
        if info is not None:
            return info
        return _start_daemon(directory, say, timeout, subnet, mode, mode_reason)


def _running(directory: Path, os_mode: bool) -> SandboxInfo | None:
    info = load_info(directory)
    if info is not None and os_mode and info.mode != "os":
        raise SandboxError(f"the sandbox in {directory} already runs in {info.mode} mode",
                           "`nbcloud sandbox reset` first, then `nbcloud sandbox start --os`")
    return info


def _preflight(subnet: str | None, os_mode: bool) -> tuple[str, str, str]:
    """(mode, why, subnet) for a new daemon, or the reason it cannot run here."""
    _check_extra()  # before the 100 MB wheelhouse: without moto the daemon could not start anyway
    mode, mode_reason = ("os", "--os") if os_mode else select_mode()
    if os_mode and os.geteuid() != 0:
        raise SandboxError("os mode needs root (namespaces, overlay mounts, systemd-nspawn)", "run it as root")
    _check_requirements(mode)
    subnet = _subnet(subnet)
    if mode == "loopback":
        from .loopback import loopback_subnet

        subnet = loopback_subnet(subnet)
    return mode, mode_reason, subnet


def _start_daemon(directory: Path, say: Progress, timeout: float, subnet: str, mode: str,
                  mode_reason: str) -> SandboxInfo:
    _check_subnet_free(subnet, directory)  # under the start lock: a concurrent start of this sandbox has finished
    previous = directory / "subnet"
    if previous.exists() and previous.read_text().strip() != subnet:
        _cleanup_network(previous.read_text().strip(), directory)  # leftovers of a dead daemon on another subnet
    previous.write_text(subnet + "\n")
    # the wheelhouse and warm uv cache feed the Jupyter bootstrap (instances have no index to install from)
    wheelhouse = ensure_wheelhouse(say)
    # loopback instances name the wheelhouse by its own path; the others see it bound at INSIDE
    uv_cache = ensure_uv_cache(inside=mode != "loopback")
    if wheelhouse and uv_cache:
        warm_uv_cache(wheelhouse, uv_cache, say, None if mode == "loopback" else f"{INSIDE}/wheelhouse")
    image = ""
    if mode == "os":
        from .osimage import image_info

        image = str((image_info() or {}).get("path") or "")
    say(f"starting the sandbox daemon ({mode} mode: {mode_reason})")
    log_path = directory / "daemon.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC_DIR, os.environ.get("PYTHONPATH")]))}
    with open(log_path, "ab") as log:
        log_start = log.tell()  # the log keeps earlier runs: an error quotes only this one's lines
        proc = subprocess.Popen(
            [sys.executable, "-m", "nbcloud.sandbox.daemon", "--dir", str(directory), "--subnet", subnet,
             "--wheelhouse", str(wheelhouse), "--uv-cache", str(uv_cache), "--mode", mode,
             f"--mode-reason={mode_reason}", *([f"--image={image}"] if image else [])],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True, cwd="/",
        )
    try:
        return _wait_ready(directory, proc, log_path, log_start, timeout)
    except BaseException:
        # Ctrl-C (or any failure) before it is ready: the daemon runs in its own session, so the interrupt missed
        # it and it would come up anyway, a sandbox nobody asked for. SIGTERM lets it undo what it made.
        _end_daemon(proc)
        raise


def _end_daemon(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _wait_ready(directory: Path, proc: subprocess.Popen[bytes], log_path: Path, log_start: int,
                timeout: float) -> SandboxInfo:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = load_info(directory)
        if info is not None and info.pid == proc.pid:
            _request(info, "GET", "/health", timeout=5)
            return info
        if proc.poll() is not None:
            with open(log_path, "rb") as log:
                log.seek(log_start)
                tail = log.read().decode(errors="replace").strip().splitlines()[-5:]
            raise SandboxError(f"the sandbox daemon exited ({proc.returncode}): {' | '.join(tail)}",
                               f"see {log_path}")
        time.sleep(0.05)
    raise SandboxError(f"the sandbox daemon did not get ready in {timeout:.0f} s", f"see {log_path}")


def status(sandbox_dir: Path | None = None) -> dict[str, Any]:
    directory = Path(sandbox_dir or default_dir())
    info = load_info(directory)
    if info is None:
        try:
            mode, reason = select_mode()
        except (SandboxError, UsageError) as exc:
            mode, reason = None, exc.message
        # what `start` would pick, so the user knows before starting
        return {"running": False, "mode": None, "next_mode": mode, "mode_reason": reason,
                "sandbox_dir": str(directory), "instances": [], "image": _image()}
    remote = _request(info, "GET", "/status")
    return {"running": True, "mode": info.mode, "mode_reason": info.mode_reason, "sandbox_dir": str(directory),
            "image": _image(),
            "endpoint_url": info.endpoint_url, "control_url": info.control_url, "subnet": info.subnet,
            "caller_ip": info.caller_ip, "login_user": info.login_user, "ssh_port": info.ssh_port, "pid": info.pid,
            "aws_cli": info.aws_cli, **remote}


def _image() -> dict[str, Any] | None:
    """The os-mode instance image (path, build date, size) when built on this machine, else None."""
    from .osimage import image_info

    info = image_info()
    return {k: info[k] for k in ("path", "built_at", "build_seconds", "size_bytes", "suite")} if info else None


def _cleanup_network(subnet: str, directory: Path) -> dict[str, Any]:
    """Remove a dead daemon's namespaces, links and guard (netns) or processes (loopback).

    Never touches a subnet a live sandbox holds.
    """
    import ipaddress

    from .hosts import Network, SubnetBusy, lock_subnet
    from .loopback import LoopbackNetwork

    try:
        os.close(lock_subnet(subnet, "cleanup"))
    except SubnetBusy:
        return {}
    if ipaddress.ip_network(subnet, strict=False).is_loopback:
        LoopbackNetwork(subnet).cleanup_all(directory / "instances")
        return {}
    if os.geteuid() != 0:
        return {}
    network = Network(subnet)
    namespaces, links = network.own_namespaces(), network.own_links()
    guard = network.guard_present()
    network.cleanup_all(namespaces)
    return {"namespaces": namespaces, "links": links, "blackhole_route": guard}


def reset(sandbox_dir: Path | None = None) -> dict[str, Any]:
    """Stop the daemon and remove everything the sandbox made (instances, namespaces, routes, nft table)."""
    directory = Path(sandbox_dir or default_dir())
    info = load_info(directory)
    stopped = False
    if info is not None:
        with contextlib.suppress(SandboxError):
            _request(info, "POST", "/shutdown", {}, timeout=10)
        deadline = time.monotonic() + 30
        while _alive(info.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(info.pid):
            os.kill(info.pid, signal.SIGKILL)
        stopped = True
    subnet_file = directory / "subnet"
    subnet = subnet_file.read_text().strip() if subnet_file.exists() else (info.subnet if info else None)
    removed: dict[str, Any] = {}
    if subnet:
        removed = _cleanup_network(subnet, directory)
    if os.geteuid() == 0:  # os mode: a dead daemon's mounted layers and loop devices go before anything is deleted
        from .ebs import detach_loops_under
        from .nspawn import unmount_layers

        unmount_layers(directory / "instances")
        detach_loops_under(directory / "volumes")
    # every disk the sandbox held (moto's state dies with the daemon, so nothing could name them again), and the
    # next instance's uv-cache copy
    _delete_now(directory, ("instances", "trash", "volumes", "snapshots", "images", "shared", "spare"))
    for name in ("sandbox.json", "subnet"):
        (directory / name).unlink(missing_ok=True)
    return {"sandbox_dir": str(directory), "stopped_daemon": stopped, "removed": removed}


def _delete_now(directory: Path, names: tuple[str, ...]) -> None:
    """Delete ``names`` with one nice'd ``rm -rf`` (several times faster than shutil.rmtree on an instance's root
    disk: a Jupyter venv and the uv cache's links), and wait for it: nothing of the sandbox outlives its reset.
    ``--one-file-system``: never through something still mounted below."""
    paths = [str(directory / name) for name in names if (directory / name).exists()]
    if not paths:
        return
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["nice", "-n", "19", "rm", "-rf", "--one-file-system", *paths], check=False,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=600)
    for path in paths:  # no rm here, or it failed: the slow way
        shutil.rmtree(path, ignore_errors=True)


def fault(instance_id: str, kind: str, sandbox_dir: Path | None = None, seconds: float = 120.0) -> dict[str, Any]:
    if kind not in FAULT_KINDS:
        raise UsageError(f"unknown fault {kind!r}", f"one of: {', '.join(FAULT_KINDS)}")
    info = _require(sandbox_dir)
    if info.mode == "loopback" and kind in ("link-down", "link-up"):
        from .loopback import LINK_FAULT_ERROR

        raise SandboxError(f"{kind}: {LINK_FAULT_ERROR}", "run the sandbox as root (netns mode) to cut links")
    result: dict[str, Any] = _request(info, "POST", "/fault",
                                      {"instance_id": instance_id, "kind": kind, "seconds": seconds})
    return result


def fault_api(operation: str, code: str, count: int = 1, sandbox_dir: Path | None = None,
              zone: str | None = None) -> dict[str, Any]:
    """The next ``count`` calls of ``operation`` (in ``zone`` only, when given) fail with ``code``; ``count=0``
    clears a pending fault."""
    if count < 0:
        raise UsageError("--count must be 0 (clear) or more")
    if operation not in _api_operations():  # a fault on `Bogus` was taken and could never fire
        raise UsageError(f"{operation!r} is not an EC2 or SSM API operation", "e.g. RunInstances, StartInstances")
    info = _require(sandbox_dir)
    result: dict[str, Any] = _request(info, "POST", "/fault-api",
                                      {"operation": operation, "code": code, "count": count, "zone": zone})
    return result


def _api_operations() -> frozenset[str]:
    """The operations the sandbox serves (botocore's models of EC2 and SSM)."""
    import botocore.session

    session = botocore.session.get_session()
    return frozenset(op for service in ("ec2", "ssm") for op in session.get_service_model(service).operation_names)


def _require(sandbox_dir: Path | None) -> SandboxInfo:
    info = load_info(sandbox_dir)
    if info is None:
        raise SandboxError("the sandbox is not running", "start it with `nbcloud sandbox start`")
    return info
