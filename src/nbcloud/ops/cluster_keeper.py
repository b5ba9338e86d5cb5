"""The keeper of a spot cluster: replaces a worker that got the interruption notice, with no command typed.

Where the launch authority lives: the instances hold no cloud credentials (by design), so, like dask-cloudprovider
(the cluster object runs where the credentials are, in the user's Python) and SkyPilot's managed jobs (a controller
that holds them), the controller is the process that has them: a small detached process on the user's machine,
started by `cluster up/scale --spot`. The instances do what only they can: the worker reads its own IMDS notice,
retires from Dask through the scheduler (its results move first) and publishes the notice as a scheduler event;
the keeper follows those events over one SSH session to NAME and launches the replacement at once.

Its lifetime is NAME's cluster's: it ends itself when the cluster or NAME's running state is gone (checked whenever
its session drops, e.g. NAME stopping), and `cluster down`, `down`, `stop` and `sandbox reset` stop it (like the
tunnel supervisor). `status` shows it on the cluster line. A keeper that is not running (the laptop slept) only
delays a replacement to the next `cluster scale`, as before.
"""

from __future__ import annotations

import json
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import write_private
from ..errors import NbcloudError
from ..remote.units import VENV
from .cluster import cluster_dir, load_state
from .context import Context

__all__ = ["keeper_view", "start_keeper", "stop_keeper", "wait_watching"]

_ENTRY = "nbcloud.ops.cluster_keeper"
BEAT_TIMEOUT = 20.0  # s without a line from the watcher (it beats every 5 s): the session is dead


def _state_path(ctx: Context, name: str) -> Path:
    return cluster_dir(ctx, name) / "keeper.json"


def _read(ctx: Context, name: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads(_state_path(ctx, name).read_text()))
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
    write_private(_state_path(ctx, name), json.dumps({"pid": proc.pid, "state": "starting", "replacements": []}))
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
    if _state_path(ctx, name).parent.exists():
        write_private(_state_path(ctx, name), json.dumps(with_reason))
    return True


# the process --------------------------------------------------------------------------------------------------
class Keeper:
    def __init__(self, ctx: Context, name: str) -> None:
        self.ctx, self.name = ctx, name
        self.state: dict[str, Any] = {"pid": os.getpid(), "state": "starting", "since": time.time(),
                                      "replacements": []}
        self.handled: set[str] = set()

    def log(self, message: str) -> None:
        print(time.strftime("%Y-%m-%dT%H:%M:%S"), message, flush=True)

    def write(self, **fields: Any) -> None:
        self.state.update(fields)
        if cluster_dir(self.ctx, self.name).exists():
            write_private(_state_path(self.ctx, self.name), json.dumps(self.state, sort_keys=True))

    def why_stop(self) -> str | None:
        """Why the keeper has nothing left to keep (None: keep going). A cloud error is no reason: retry."""
        state = load_state(self.ctx, self.name)
        if state is None or not state.spot:
            return "the cluster is gone"
        record = self.ctx.store.get(self.name)
        if record is None:
            return f"{self.name} is gone"
        try:
            instance = self.ctx.provider_for(record).find(self.name)
        except NbcloudError:
            return None
        if instance is None or instance.state != "running":
            return f"{self.name} is {instance.state if instance else 'gone'}"
        return None

    def events(self) -> Iterator[dict[str, Any]]:
        """The watcher's JSON lines over one SSH session to NAME, until the session ends or falls silent."""
        from ..cluster.engine import get_engine

        state = load_state(self.ctx, self.name)
        assert state is not None
        script = get_engine(state.engine).notice_watcher()
        argv = ["ssh", "-F", str(self.ctx.paths.ssh_config), "-o", "BatchMode=yes", "-o", "ServerAliveInterval=5",
                "-o", "ServerAliveCountMax=3", f"nb-{self.name}", f"{VENV}/bin/python -u -c {shlex.quote(script)}"]
        # stdin stays open and unwritten: its EOF (this process gone) ends the watcher on NAME
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sys.stdout)
        assert proc.stdout is not None
        try:
            while True:
                ready, _, _ = select.select([proc.stdout], [], [], BEAT_TIMEOUT)
                line = proc.stdout.readline() if ready else b""
                if not line:
                    return
                try:
                    yield dict(json.loads(line))
                except ValueError:
                    self.log(f"watcher: {line.decode(errors='replace').strip()}")
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()

    def replace(self, event: dict[str, Any]) -> None:
        from .cluster import replace_noticed

        iid = str(event.get("instance_id"))
        got = time.time()
        self.log(f"spot notice on {iid} (worker {event.get('worker')}): replacing it")
        self.write(state="replacing", noticed=iid)
        try:
            result = replace_noticed(self.ctx, self.name, {iid}, progress=self.log)
        except Exception as exc:  # one failed replacement must not end the keeper
            message = exc.message if isinstance(exc, NbcloudError) else repr(exc)
            self.log(f"replacing {iid} failed: {message}")
            self.handled.discard(iid)  # the next session's replay of the notice tries again
            self.write(state="watching", last_error=message)
            return
        done = time.time()
        seen = float(event.get("seen") or got)
        entry = {"noticed": iid, "launched": result.launched if result else [], "notice_seen": seen,
                 "keeper_got": got, "joined": done, "seconds": round(done - seen, 2)}
        self.state["replacements"].append(entry)
        self.log(f"replaced {iid} by {', '.join(entry['launched']) or 'nothing (already replaced)'} "
                 f"{entry['seconds']:.1f} s after the worker saw the notice")
        self.write(state="watching", noticed=None)

    def run(self) -> int:
        backoff = 1.0
        while True:
            why = self.why_stop()
            if why:
                self.log(f"stopping: {why}")
                self.write(state="stopped", reason=why)
                return 0
            self.write(state="connecting")
            for event in self.events():
                kind = event.get("event")
                if kind == "ready":
                    self.log(f"watching {event.get('address')} ({event.get('workers')} worker(s))")
                    self.write(state="watching")
                    backoff = 1.0
                elif kind == "notice" and str(event.get("instance_id")) not in self.handled:
                    self.handled.add(str(event.get("instance_id")))
                    self.replace(event)
            time.sleep(backoff)
            backoff = min(backoff * 2, 15.0)


def _terminate(signum: int, _frame: Any) -> None:
    print(time.strftime("%Y-%m-%dT%H:%M:%S"), f"stopping: signal {signum}", flush=True)
    raise SystemExit(128 + signum)  # unwinds: a launch in progress rolls back, the SSH session closes


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    return Keeper(Context.create(), argv[0]).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
