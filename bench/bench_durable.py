"""What durable outputs (`up`'s default) cost at launch: `up` to Jupyter answering, with and without them.

Prints, in one run (the two kinds alternate, and so does which goes first, so load drift on a shared machine and
the first launch's cold caches hit both alike):
  * `nbcloud up` (library call, `wait_jupyter=True`) to Jupyter answering, with durable outputs (the default) and
    with `--no-durable-outputs`, each run and the medians, with the cumulative phases and the bootstrap's own venv
    step (from its log: the step the two extra packages lengthen)
  * the difference and the ratio durable / classic

Run as root: python bench/bench_durable.py [--runs 2] [--subnet 10.212.0.0/16]
Sandbox subnet 10.212.0.0/16 (--subnet), a temporary NBCLOUD_HOME / NBCLOUD_SANDBOX_DIR; resets the sandbox.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))


def up_to_jupyter(name: str, durable: bool) -> tuple[float, float, str]:
    from nbcloud import ops
    from nbcloud.models import InstanceSpec
    from nbcloud.ops.shell import read_log

    ctx = ops.Context.create()
    try:
        result = ops.up(ctx, InstanceSpec(name=name, instance_type="t3.micro", durable_outputs=durable),
                        provider_name="sandbox", wait_jupyter=True)
        steps = [line for line in read_log(ctx, name, "bootstrap", 200).lines if "step venv: ok (" in line]
        venv = float(steps[-1].split("ok (", 1)[1].split()[0]) if steps else float("nan")
    finally:
        if ctx.store.get(name) is not None:
            ops.down(ctx, name)
    return result.seconds["jupyter"], venv, ", ".join(f"{k} {v:.2f}" for k, v in result.seconds.items())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2, help="launches of each kind")
    parser.add_argument("--subnet", default="10.212.0.0/16", help="the sandbox's subnet (one not held by another)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nbbench-durable-"))
    os.environ["NBCLOUD_HOME"] = str(tmp / "home")
    os.environ["NBCLOUD_USER_SSH_CONFIG"] = str(tmp / "ssh_config")
    os.environ["NBCLOUD_SANDBOX_SUBNET"] = args.subnet
    os.environ["NBCLOUD_SANDBOX_DIR"] = str(tmp / "sandbox")
    os.environ["NBCLOUD_QUIET"] = "1"
    from nbcloud.sandbox import client as sandbox

    times: dict[bool, list[float]] = {True: [], False: []}
    venvs: dict[bool, list[float]] = {True: [], False: []}
    try:
        sandbox.start()  # first: a subnet held by another sandbox fails at once
        for run in range(args.runs):
            # the first launch on a new sandbox pays its cold caches: which kind goes first alternates
            for durable in ((True, False) if run % 2 == 0 else (False, True)):
                seconds, venv, phases = up_to_jupyter(f"bd{run}{'d' if durable else 'c'}", durable)
                times[durable].append(seconds)
                venvs[durable].append(venv)
                print(f"  run {run + 1} {'durable' if durable else 'classic'}: {seconds:.2f} s  ({phases}; "
                      f"bootstrap venv step {venv:.2f} s)")
    finally:
        sandbox.reset()
        shutil.rmtree(tmp, ignore_errors=True)

    d, c = statistics.median(times[True]), statistics.median(times[False])
    for label, key in (("durable outputs (default)", True), ("--no-durable-outputs     ", False)):
        print(f"up to Jupyter answering, {label}: median {statistics.median(times[key]):.2f} s  "
              f"({', '.join(f'{x:.2f}' for x in times[key])}); venv step median {statistics.median(venvs[key]):.2f} s")
    print(f"durable - classic: {d - c:+.2f} s; ratio durable / classic: {d / c:.2f}")


if __name__ == "__main__":
    main()
