"""Spot notice → replacement worker joined, on the sandbox, with no command typed (the cluster's keeper).

Prints, per round and as a median, on a sandbox of its own: a 2-worker `--spot` cluster; a spot notice on one
worker (window 120 s, as on AWS); from the notice to
  * the worker seeing it (its preload polls the IMDS every second) and announcing it on the scheduler's event log,
  * the keeper on this machine receiving it (one SSH session to the scheduler's instance),
  * the replacement joined the scheduler (launch, boot, package install, certificate, worker start).

Run as root: python bench/bench_spot.py [--subnet 10.178.0.0/16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))


def nb(env: dict[str, str], *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "nbcloud.cli.app", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"nbcloud {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    return done


def keeper(env: dict[str, str]) -> dict:
    view = json.loads(nb(env, "status", "bench", "--json").stdout)
    view = view[0] if isinstance(view, list) else view
    return dict(view["cluster"]["keeper"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subnet", default=os.environ.get("NBCLOUD_SANDBOX_SUBNET", "10.178.0.0/16"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from nbcloud.sandbox import client as sandbox

    tmp = Path(tempfile.mkdtemp(prefix="bench-spot-"))
    directory = tmp / "sandbox"
    src = str(Path(__file__).resolve().parent.parent / "src")
    env = {**os.environ, "NBCLOUD_HOME": str(tmp / "home"), "NBCLOUD_USER_SSH_CONFIG": str(tmp / "ssh" / "config"),
           "NBCLOUD_SANDBOX_DIR": str(directory), "NBCLOUD_QUIET": "1",
           "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    sandbox.start(directory, subnet=args.subnet)
    rows = []
    try:
        nb(env, "up", "bench", "--provider", "sandbox", "--no-connect", "--idle-stop", "off")
        up = json.loads(nb(env, "cluster", "up", "bench", "--workers", "2", "--spot", "--json").stdout)
        workers = [w["instance_id"] for w in up["workers"]]
        for n in range(args.rounds):
            target = workers[0]
            noticed_at = time.time()
            sandbox.fault(target, "spot-notice", directory, seconds=120)
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline:
                done = [r for r in keeper(env)["replacements"] if r["noticed"] == target]
                if done:
                    break
                time.sleep(1)
            else:
                raise SystemExit(f"round {n + 1}: no replacement for {target} within 150 s")
            r = done[0]
            rows.append((r["notice_seen"] - noticed_at, r["keeper_got"] - noticed_at, r["joined"] - noticed_at))
            print(f"round {n + 1}: worker saw the notice {rows[-1][0]:.1f} s, keeper got it {rows[-1][1]:.1f} s, "
                  f"replacement joined {rows[-1][2]:.1f} s after the notice")
            workers = [*workers[1:], *r["launched"]]
            # the sandbox boots and tears down instances one at a time: let the noticed worker's teardown end
            # before the next notice, so a round measures its own replacement (AWS does these in parallel)
            time.sleep(20)
        for i, what in enumerate(("worker saw", "keeper got", "joined")):
            print(f"median {what}: {statistics.median(row[i] for row in rows):.1f} s")
        nb(env, "down", "bench", "--yes")
    finally:
        sandbox.reset(directory)


if __name__ == "__main__":
    main()
