"""How long after the idle limit the agent's stop shows in the cloud API (sandbox).

Launches N instances concurrently with `nbcloud up --idle-stop 1m`, leaves them alone, and polls DescribeInstances
(never ssh: a session is activity) until each is `stopping`/`stopped`. Idle starts when `up` returns (its ssh
sessions are the last activity). Prints each run's delay past the limit, the agent's own figure (the idle time it
logged when it stopped), and the median. Goal ≤ 30 s; SkyPilot's autostop checks once a minute (60 s granularity).

Run as root: python bench/bench_autostop.py [--runs 5] [--check-period 10] [--subnet 10.212.0.0/16]
Uses its own sandbox on --subnet (or $NBCLOUD_BENCH_SUBNET) with temporary NBCLOUD_HOME/NBCLOUD_SANDBOX_DIR,
reset at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
sys.path.insert(0, str(SRC))

LIMIT = 60
SKYPILOT_GRANULARITY = 60


def nb(env: dict[str, str], *args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "nbcloud.cli.app", *args, "--json"], capture_output=True, text=True,
                          env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"nbcloud {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return json.loads(done.stdout)


LAUNCHING = threading.Lock()


def one_run(env: dict[str, str], ec2, sandbox_dir: Path, name: str) -> dict[str, float]:
    # one `up` at a time (concurrent ups in one NBCLOUD_HOME race on ~/.ssh/config); the idle waits overlap
    with LAUNCHING:
        up = nb(env, "up", name, "--provider", "sandbox", "--no-connect", "--idle-stop", "1m")
    idle_from = time.monotonic()
    iid = up["instance_id"]
    deadline = idle_from + LIMIT + 180
    while time.monotonic() < deadline:
        state = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]
        if state in ("stopping", "stopped"):
            break
        time.sleep(0.5)
    else:
        raise RuntimeError(f"{name} did not stop within {deadline - idle_from:.0f} s")
    stopped = time.monotonic()
    log = (sandbox_dir / "instances" / iid / "root/var/log/nbcloud/agent.log").read_text()
    found = re.findall(r"stopping the instance: idle for (\d+)s", log)
    return {"delay": stopped - idle_from - LIMIT, "agent_idle": float(found[-1]) if found else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--subnet", default=os.environ.get("NBCLOUD_BENCH_SUBNET", "10.212.0.0/16"),
                        help="the sandbox's subnet (one no other sandbox holds)")
    parser.add_argument("--check-period", type=int, default=None, help="agent check period, s (default: nbcloud's)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the sandbox needs network namespaces")

    tmp = Path(tempfile.mkdtemp(prefix="nbcloud-bench-autostop-"))
    os.environ["NBCLOUD_HOME"] = str(tmp / "home")
    os.environ["NBCLOUD_USER_SSH_CONFIG"] = str(tmp / "ssh_config")
    os.environ["NBCLOUD_SANDBOX_SUBNET"] = args.subnet
    os.environ["NBCLOUD_SANDBOX_DIR"] = str(tmp / "sandbox")
    os.environ["NBCLOUD_QUIET"] = "1"
    if args.check_period:
        os.environ["NBCLOUD_AGENT_CHECK_PERIOD"] = str(args.check_period)
    env = dict(os.environ) | {"PYTHONPATH": str(SRC)}

    import boto3

    from nbcloud.ops.agent import agent_check_period
    from nbcloud.sandbox import client as sandbox

    info = sandbox.start()
    try:
        ec2 = boto3.client("ec2", endpoint_url=info.endpoint_url, region_name=info.region,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        names = [f"bench-as{n}" for n in range(args.runs)]
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=args.runs) as pool:
            runs = list(pool.map(lambda n: one_run(env, ec2, Path(info.sandbox_dir), n), names))
        print(f"idle stop, limit {LIMIT} s, agent check period {agent_check_period()} s, {args.runs} instances "
              f"concurrently ({time.monotonic() - started:.0f} s):")
        for name, run in zip(names, runs, strict=True):
            print(f"  {name}: stopped {run['delay']:5.1f} s after the limit (agent saw {run['agent_idle']:.0f} s idle)")
        median = statistics.median(r["delay"] for r in runs)
        print(f"median delay past the limit: {median:.1f} s (goal ≤ 30 s; SkyPilot's granularity "
              f"{SKYPILOT_GRANULARITY} s) → {'OK' if median <= 30 else 'MISSED'}")
        for name in names:
            subprocess.run([sys.executable, "-m", "nbcloud.cli.app", "down", name, "--yes", "--json"],
                           capture_output=True, env=env, timeout=300)
    finally:
        sandbox.reset()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
