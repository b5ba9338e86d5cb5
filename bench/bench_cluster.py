"""`nbcloud cluster` on the sandbox: time to workers connected, and the scheduler's task throughput over TLS.

Prints, in one run, on a sandbox of its own:
  * `cluster up NAME --workers 1` → all workers connected (the first one also installs Dask into NAME's venv),
    and `cluster up NAME --workers 4` after a `cluster down` (seconds, wall clock of the CLI)
  * tasks/s for 5,000 no-op tasks (`client.map` + `gather`) through the cluster's scheduler (TLS, real instances),
    the same on a `LocalCluster` with the same number of workers in the notebook's instance (plain TCP, loopback),
    and the ratio (goal ≥ 0.5)

Run as root: python bench/bench_cluster.py [--subnet 10.177.0.0/16] [--workers 4] [--tasks 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

THROUGHPUT = """
import json, time
import dask
from dask.distributed import Client, LocalCluster

def noop(i):
    return i

def rate(client, n):
    client.gather(client.map(noop, range(200), pure=False))  # warm: functions shipped, connections open
    t = time.perf_counter()
    client.gather(client.map(noop, range(n), pure=False))
    return n / (time.perf_counter() - t)

if __name__ == "__main__":  # LocalCluster's worker processes re-import this file
    out = {}
    with Client() as client:
        client.wait_for_workers(WORKERS, timeout=300)
        out["cluster"] = max(rate(client, TASKS) for _ in range(2))
    with dask.config.set({"distributed.comm.require-encryption": False}), LocalCluster(
            n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None,
            protocol="tcp://") as local, Client(local) as client:
        out["local"] = max(rate(client, TASKS) for _ in range(2))
    print(json.dumps(out))
"""


def nb(env: dict[str, str], *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "nbcloud.cli.app", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"nbcloud {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    return done


def timed_up(env: dict[str, str], name: str, workers: int) -> tuple[float, dict]:
    t = time.monotonic()
    result = json.loads(nb(env, "cluster", "up", name, "--workers", str(workers), "--json").stdout)
    return time.monotonic() - t, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subnet", default=os.environ.get("NBCLOUD_SANDBOX_SUBNET", "10.177.0.0/16"))
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=5000)
    args = parser.parse_args()
    from nbcloud.sandbox import client as sandbox

    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    directory = tmp / "sandbox"
    src = str(Path(__file__).resolve().parent.parent / "src")
    env = {**os.environ, "NBCLOUD_HOME": str(tmp / "home"), "NBCLOUD_USER_SSH_CONFIG": str(tmp / "ssh" / "config"),
           "NBCLOUD_SANDBOX_DIR": str(directory), "NBCLOUD_QUIET": "1",
           "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    sandbox.start(directory, subnet=args.subnet)
    try:
        nb(env, "up", "bench", "--provider", "sandbox", "--no-connect", "--idle-stop", "off")
        one, _ = timed_up(env, "bench", 1)
        print(f"cluster up --workers 1 → connected: {one:.1f} s (includes installing Dask into the notebook's venv)")
        nb(env, "cluster", "down", "bench", "--json")
        many, result = timed_up(env, "bench", args.workers)
        hosts = {w["host"] for w in result["workers"]}
        print(f"cluster up --workers {args.workers} → connected: {many:.1f} s ({len(result['connected'])} connected, "
              f"{len(hosts)} instance addresses)")
        script = THROUGHPUT.replace("WORKERS", str(args.workers)).replace("TASKS", str(args.tasks))
        nb_ssh = [sys.executable, "-m", "nbcloud.cli.app", "ssh", "bench", "--"]
        subprocess.run([*nb_ssh, "cat > /tmp/bench_throughput.py"], input=script, env=env, check=True, text=True,
                       capture_output=True, timeout=60)
        done = subprocess.run([*nb_ssh, "cd /tmp && /opt/nbcloud/venv/bin/python bench_throughput.py"], env=env,
                              capture_output=True, text=True, timeout=900)
        if done.returncode != 0 or not done.stdout.strip():
            raise SystemExit(f"throughput run failed: {done.stderr.strip()[-800:]}")
        rates = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{args.tasks} no-op tasks: cluster (TLS, {args.workers} instances) {rates['cluster']:.0f} tasks/s; "
              f"LocalCluster ({args.workers} workers, TCP loopback) {rates['local']:.0f} tasks/s; "
              f"ratio {rates['cluster'] / rates['local']:.2f} (goal ≥ 0.5)")
        nb(env, "down", "bench", "--yes")
    finally:
        sandbox.reset(directory)


if __name__ == "__main__":
    main()
