"""`nbcloud status` with N running instances ÷ `status` of one, in one run (sandbox).

`status` reads each running instance's agent state (why it is busy or idle, when it stops) over ssh: in parallel,
each bounded by a short timeout. This bench launches instances with `nbcloud up --no-connect --idle-stop off`
(one at a time: they share one NBCLOUD_HOME), and after each batch times the CLI as a user runs it:
`nbcloud status --json` (every instance) against `nbcloud status NAME --json` (one), taken in turn, median of --runs,
wall time and the CPU of the command and its ssh children. Goal: ratio ≤ 2 for 50 instances (50 sandbox instances
with Jupyter fit on this 2-core machine: ~15 min to launch them one by one).

Run as root: python bench/bench_status.py [--sizes 1,50] [--runs 5] [--subnet 10.214.0.0/16] [--baseline DIR]
``--baseline DIR`` (another tree's ``src``, e.g. ``git archive main src | tar -x -C /tmp/base``) times that tree's CLI
too, against the same instances, its runs interleaved with this tree's: a before/after in one run.
Uses its own sandbox with temporary NBCLOUD_HOME/NBCLOUD_SANDBOX_DIR, reset at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
sys.path.insert(0, str(SRC))


def nb(env: dict[str, str], *args: str, timeout: float = 900) -> tuple[float, float, object]:
    """(wall s, CPU s of the command and its children, parsed --json output)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "nbcloud.cli.app", *args, "--json"], capture_output=True,
                          text=True, env=env, timeout=timeout)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"nbcloud {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, json.loads(done.stdout)


Timing = tuple[tuple[float, float], tuple[float, float], list[dict]]


def timed_status(envs: dict[str, dict[str, str]], runs: int, one: str) -> dict[str, Timing]:
    """For each tree (label → its environment): `status ONE` and `status` (every instance) taken in turn, ``runs``
    times each, the trees interleaved too, so that a change in the load of a shared machine weighs on all alike:
    the medians (wall s, CPU s) of each and the last full table."""
    times: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    rows: dict[str, list[dict]] = {}
    for _ in range(runs):
        for label, env in envs.items():
            for every in (False, True):
                wall, cpu, out = nb(env, "status", *(() if every else (one,)))
                times.setdefault((label, every), []).append((wall, cpu))
                if every:
                    rows[label] = out  # type: ignore[assignment]

    def median(pairs: list[tuple[float, float]]) -> tuple[float, float]:
        return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)

    return {label: (median(times[(label, False)]), median(times[(label, True)]), rows[label]) for label in envs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,20", help="instance counts to measure at, ascending")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--subnet", default="10.214.0.0/16")
    parser.add_argument("--baseline", type=Path, help="another tree's src directory, timed interleaved with this one")
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    if os.geteuid() != 0:
        sys.exit("run as root: the sandbox needs network namespaces")

    tmp = Path(tempfile.mkdtemp(prefix="nbcloud-bench-status-"))
    os.environ.update(NBCLOUD_HOME=str(tmp / "home"), NBCLOUD_USER_SSH_CONFIG=str(tmp / "ssh_config"),
                      NBCLOUD_SANDBOX_SUBNET=args.subnet, NBCLOUD_SANDBOX_DIR=str(tmp / "sandbox"),
                      NBCLOUD_QUIET="1")
    env = dict(os.environ) | {"PYTHONPATH": str(SRC)}
    envs = {"this": env} | ({"baseline": env | {"PYTHONPATH": str(args.baseline.resolve())}} if args.baseline else {})
    from nbcloud.sandbox import client as sandbox

    sandbox.start()
    names: list[str] = []
    try:
        results = []
        for size in sizes:
            t0 = time.monotonic()
            while len(names) < size:
                name = f"bench-st{len(names)}"
                nb(env, "up", name, "--provider", "sandbox", "--no-connect", "--idle-stop", "off")
                names.append(name)
            print(f"{size} instances up ({time.monotonic() - t0:.0f} s for the last batch)", flush=True)
            for label, ((one_wall, one_cpu), (all_wall, all_cpu), rows) in timed_status(envs, args.runs,
                                                                                         names[0]).items():
                read = sum(1 for r in rows if r.get("idle_reason") and "unreachable" not in r["idle_reason"])
                results.append((label, size, one_wall, one_cpu, all_wall, all_cpu, read))
                print(f"  {label}: status of 1: {one_wall:.2f} s wall, {one_cpu:.2f} s CPU; status of {size}: "
                      f"{all_wall:.2f} s wall, {all_cpu:.2f} s CPU; agents read {read}/{size}; "
                      f"ratio {all_wall / one_wall:.2f}", flush=True)
        print(f"\nsummary (median of {args.runs} runs each; goal: ratio ≤ 2 for 50):")
        for label, size, one_wall, one_cpu, all_wall, all_cpu, read in results:
            print(f"  {label:8s} N={size:3d}: status(N) {all_wall:5.2f} s ÷ status(1) {one_wall:5.2f} s = "
                  f"{all_wall / one_wall:4.2f} (CPU {all_cpu:.2f} s vs {one_cpu:.2f} s; agents read {read}/{size})")
    finally:
        from concurrent.futures import ThreadPoolExecutor

        def down(name: str) -> None:  # each waits for its own termination: four at once (other names, other locks)
            with contextlib.suppress(subprocess.TimeoutExpired):  # the reset below removes what is left
                subprocess.run([sys.executable, "-m", "nbcloud.cli.app", "down", name, "--yes", "--json"],
                               capture_output=True, env=env, timeout=300)

        try:
            with ThreadPoolExecutor(max_workers=4) as pool:
                list(pool.map(down, names))
        finally:
            sandbox.reset()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
