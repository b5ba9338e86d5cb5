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
from typing import Any

from ..config import write_private
from ..errors import NbcloudError
from ..remote.units import VENV
from .cluster import load_state
from .context import Context
from .keeper_process import BEAT_TIMEOUT, cluster_dir, state_path

__all__ = ["Keeper", "main"]

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
            write_private(state_path(self.ctx, self.name), json.dumps(self.state, sort_keys=True))

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
        from ..cluster.engines import get_engine

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
