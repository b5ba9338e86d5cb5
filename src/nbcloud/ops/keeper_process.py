"""Starting, finding and stopping a spot cluster's keeper process (ops/cluster_keeper.py is the process itself).

Below the use cases: `cluster up/scale` start it, and stopping an instance's local companions (tunnel, lab, keeper)
stops it, without importing the cluster use case.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..config import write_private
from .context import Context

__all__ = ["BEAT_TIMEOUT", "cluster_dir", "keeper_view", "start_keeper", "state_path", "stop_keeper", "wait_watching"]

_ENTRY = "nbcloud.ops.cluster_keeper"


def cluster_dir(ctx: Context, name: str) -> Path:
    """A cluster's local files: CA key, certificates, state, keeper state and log."""
    return ctx.paths.secrets_dir / f"{name}.cluster"

BEAT_TIMEOUT = 20.0  # s without a line from the watcher (it beats every 5 s): the session is dead


def state_path(ctx: Context, name: str) -> Path:
    return cluster_dir(ctx, name) / "keeper.json"


def _read(ctx: Context, name: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads(state_path(ctx, name).read_text()))
    except (OSError, ValueError):
        return None


def _is_keeper(pid: int | None, name: str) -> bool:
    """By command line, not pid alone: a recycled pid belongs to something else."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            if ") Z" in f.read():
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return _ENTRY.encode() in argv and name.encode() in argv


def keeper_view(ctx: Context, name: str) -> dict[str, Any] | None:
    """`status`'s view: pid, state (``stopped`` when its process is gone), replacements made."""
    st = _read(ctx, name)
    if st is None:
        return None
    if not _is_keeper(st.get("pid"), name) and st.get("state") != "stopped":
        st = {**st, "state": "stopped", "reason": "the keeper process is not running"}
    return st


def start_keeper(ctx: Context, name: str) -> int:
    """Start NAME's keeper unless one runs; its pid."""
    st = _read(ctx, name)
    if st is not None and _is_keeper(st.get("pid"), name):
        return int(st["pid"])
    log = cluster_dir(ctx, name) / "keeper.log"
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])  # importable from "/" when nbcloud runs from a source tree
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen([sys.executable, "-m", _ENTRY, name], stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                cwd="/", env=env, start_new_session=True, close_fds=True)
    finally:
        os.close(fd)
    # written here too, so a `down` right after `cluster up` finds the pid before the keeper writes its own state
    write_private(state_path(ctx, name), json.dumps({"pid": proc.pid, "state": "starting", "replacements": []}))
    return proc.pid


def wait_watching(ctx: Context, name: str, timeout: float = 30.0) -> str:
    """Until NAME's keeper follows the scheduler's notices (or ``timeout``); its state then. A notice before that
    is not lost (the keeper replays the scheduler's log when it connects), only acted on a few seconds later."""
    deadline = time.monotonic() + timeout
    while True:
        st = keeper_view(ctx, name) or {}
        state = str(st.get("state", "none"))
        if state in ("watching", "replacing", "stopped") or time.monotonic() >= deadline:
            return state
        time.sleep(0.2)


def stop_keeper(ctx: Context, name: str, timeout: float = 10.0) -> bool:
    """Stop NAME's keeper; True when one was running."""
    st = _read(ctx, name)
    pid = st.get("pid") if st else None
    if not _is_keeper(pid, name):
        return False
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _is_keeper(pid, name) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _is_keeper(pid, name):
        os.kill(pid, signal.SIGKILL)
    with_reason = {**(st or {}), "state": "stopped", "reason": "stopped by nbcloud"}
    if state_path(ctx, name).parent.exists():
        write_private(state_path(ctx, name), json.dumps(with_reason))
    return True
