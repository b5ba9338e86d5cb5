"""Issue 14: `up` killed at every step and inside RunInstances (SIGINT, SIGKILL) leaves nothing billed that nbcloud
cannot see or remove.

Each case starts `nbcloud up` in its own process group, kills the group when stderr shows a step (plus an offset),
runs the next command a user would run, and then asks the sandbox's EC2 API directly (boto3) for anything tagged
with the name: running or pending instances, key pairs, security groups, volumes. The goal is 0 of each.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from tests.helpers import wait_until

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

CHECKING, TYPE, KEY_PAIR, GROUP = "checking access", "t3.medium:", "key pair", "security group"
LAUNCHING, RUNNING, SSH, JUPYTER = "launching instance", "waiting for i-", "waiting for ssh", "installing Jupyter"
STEPS = (CHECKING, TYPE, KEY_PAIR, GROUP, LAUNCHING, RUNNING, SSH, JUPYTER)

# (step seen on stderr, seconds after it, signal, RunInstances answer held back this long, next command)
NEXT = ("down", "status", "doctor", "down")
CASES = [(step, 0.0, sig, 0.0, NEXT[(i + (sig == signal.SIGKILL)) % len(NEXT)])
         for i, step in enumerate(STEPS) for sig in (signal.SIGINT, signal.SIGKILL)]
CASES += [(LAUNCHING, delay, sig, 0.0, "down") for delay in (0.01, 0.025, 0.04)
          for sig in (signal.SIGINT, signal.SIGKILL)]
# inside RunInstances: the sandbox makes the instance and holds its answer back, the kill lands in between
CASES += [(LAUNCHING, delay, sig, 1.5, follow) for delay, follow in ((0.3, "down"), (0.9, "doctor"))
          for sig in (signal.SIGINT, signal.SIGKILL)]
CASES += [(LAUNCHING, 0.3, signal.SIGKILL, 1.5, "up")]  # and `up NAME` again works (it refused: "keys not here")
CASES += [(SSH, 0.3, signal.SIGKILL, 0.0, "status"), (JUPYTER, 0.5, signal.SIGKILL, 0.0, "down")]


#: per case: what the EC2 API held for the name right after the kill, and after the next command (printed at the end)
FIGURES: dict[str, tuple[int, int]] = {}


@pytest.fixture(scope="module", autouse=True)
def _report() -> Any:
    yield
    if FIGURES:
        inside = sum(1 for case_id in FIGURES if "-held" in case_id)
        print(f"\nkill points: {len(FIGURES)} (inside RunInstances: {inside}); resources left right after the kill: "
              f"{sum(b for b, _ in FIGURES.values())} in {sum(1 for b, _ in FIGURES.values() if b)} case(s), all "
              f"found by the next command; orphans after it: {sum(a for _, a in FIGURES.values())}")


def _case_id(case: tuple[Any, ...]) -> str:
    step, delay, sig, held, follow = case
    return (f"{signal.Signals(sig).name}-{step.split()[0].rstrip(':')}+{int(delay * 1000)}ms"
            + (f"-held{held:g}s" if held else "") + f"-then-{follow}")


def _left(world, name: str) -> list[str]:
    """What the EC2 API itself holds for ``name``: live instances, key pairs, groups, volumes."""
    ec2 = world.ec2()
    tag = [{"Name": "tag:nbcloud:name", "Values": [name]}]
    found = [f"instance {i['InstanceId']} {i['State']['Name']}"
             for r in ec2.describe_instances(Filters=tag)["Reservations"] for i in r["Instances"]
             if i["State"]["Name"] in {"pending", "running", "stopping", "stopped"}]
    found += [f"key pair {k['KeyName']}" for k in ec2.describe_key_pairs(Filters=tag)["KeyPairs"]]
    found += [f"key pair {k['KeyName']}" for k in ec2.describe_key_pairs()["KeyPairs"]
              if k["KeyName"].startswith(f"nbcloud-{name}-") and not k.get("Tags")]
    found += [f"security group {g['GroupId']}" for g in ec2.describe_security_groups(Filters=tag)["SecurityGroups"]]
    found += [f"volume {v['VolumeId']} {v['State']}" for v in ec2.describe_volumes(Filters=tag)["Volumes"]
              if v["State"] in {"creating", "available", "in-use"}]
    return found


def _ssh_children(name: str) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "ssh " in line and f"nb-{name}" in line.split()]


def _up_and_kill(world, name: str, step: str, delay: float, sig: int,
                 on_step: Any = None) -> tuple[int, str]:
    """`nbcloud up NAME` killed ``delay`` s after ``step`` shows on stderr (``on_step(lines)`` run first); its exit
    status and stderr."""
    env = {k: v for k, v in world.env.items() if k != "NBCLOUD_QUIET"}  # the progress lines are the trigger
    proc = subprocess.Popen([sys.executable, "-m", "nbcloud.cli.app", "up", name, "--provider", "sandbox",
                             "--no-connect", "--idle-stop", "off"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if step in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not seen.wait(120):
        proc.kill()
        raise AssertionError(f"`up {name}` never showed {step!r}:\n{''.join(lines)}")
    if on_step is not None:
        on_step(lines)
    time.sleep(delay)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # Ctrl-C: the terminal signals the whole process group
    else:
        os.kill(proc.pid, sig)  # `kill -9 PID`: its ssh children are not told
    proc.wait(timeout=180)
    reader.join(timeout=10)
    return proc.returncode, "".join(lines)


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_killed_up_leaves_nothing_behind(world, case: tuple[Any, ...]) -> None:
    from nbcloud.sandbox import client as sandbox

    step, delay, sig, held, follow = case
    name = f"kill{CASES.index(case):02d}"
    world.names.add(name)
    if held:
        sandbox.fault_api("RunInstances", f"delay:{held:g}", sandbox_dir=world.sandbox.sandbox_dir)
    try:
        for _ in range(3):
            code, stderr = _up_and_kill(world, name, step, delay, sig)
            if code != 0 or not delay:
                break
            # `up` ended before the kill: the step was shorter than the delay (a warm install takes well under a
            # second). The instance is whole: remove it and aim the kill earlier into the same step.
            world.nb("down", name)
            delay /= 4
    finally:
        sandbox.fault_api("RunInstances", "delay:0", count=0, sandbox_dir=world.sandbox.sandbox_dir)

    if sig == signal.SIGINT:
        assert code == 130, stderr
        assert "nothing half-created" not in stderr, "the old blanket claim, made without checking"
        if step not in (CHECKING, TYPE):  # once the launch was written down it says what it rolled back
            assert "interrupted — rolled back launch" in stderr, stderr
        assert _left(world, name) == [], f"Ctrl-C rolled back in process:\n{stderr}"
    else:
        assert code == -signal.SIGKILL
        # no ssh wait loop outlives the killed `up` (it would for up to 900 s)
        wait_until(lambda: not _ssh_children(name), 1, what=f"ssh nb-{name} children gone")

    before = _left(world, name)
    _next_command(world, name, follow, before)
    after = _left(world, name)
    FIGURES[_case_id(case)] = (len(before), len(after))
    assert after == [], f"after `{follow}`: left in the cloud (before it: {before})"
    assert name not in world.nb("status").stdout
    assert not (world.home / "keys" / name).exists(), "the launch's local keys went with it"


def _next_command(world, name: str, follow: str, before: list[str]) -> None:
    """What a user runs next; each must find the interrupted launch by its launch id and remove it (or adopt it)."""
    if follow == "down":
        done = world.nb("down", name, check=False)
        if before:  # it used to say "no instance named"
            assert done.returncode == 0 and f"{name} is gone" in done.stdout, done.stderr
        else:
            assert done.returncode in (0, 2), done.stderr
    elif follow == "status":
        world.nb("status")
    elif follow == "doctor":
        listed = world.nb("doctor", "--orphans", "--provider", "sandbox")
        if before:  # the killed launch's resources are orphans now, instance included
            assert f"name {name}," in listed.stdout, listed.stdout
        world.nb("doctor", "--orphans", "--fix", "--provider", "sandbox")
    elif follow == "up":  # `up NAME` again works (it used to refuse: "its keys are not on this machine")
        again = world.up(name, "--idle-stop", "off")
        assert again["state"] == "running" and not again["reused"]
        assert [r for r in _left(world, name) if r.startswith("instance")] == [f"instance {again['instance_id']} "
                                                                            "running"], "one instance, the new one"
        world.nb("down", name)
