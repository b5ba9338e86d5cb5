"""Issue 14 without a cloud: the launch intent in the store, the bootstrap failure's cause, what an interrupt says."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from nbcloud.ops.bootlog import failure_cause
from nbcloud.ops.launches import Recovery, describe_recovery
from nbcloud.state import LaunchIntent, Store

UV_LOG = """\
2026-11-30T18:28:00+0000 nbcloud-bootstrap: start (instance bad8)
2026-11-30T18:28:00+0000 nbcloud-bootstrap: step python: start
2026-11-30T18:28:00+0000 nbcloud-bootstrap: step python: ok (0.01 s)
2026-11-30T18:28:00+0000 nbcloud-bootstrap: step venv: start
2026-11-30T18:28:00+0000 nbcloud-bootstrap: step venv failed (exit 1, line 112)
error: No solution found when resolving dependencies
  cause: Because no-such-package-xyz was not found in the provided package locations and you require \
no-such-package-xyz, we can conclude that your requirements are unsatisfiable.
--- cloud-init-output.log (last 50 lines) ---
error: this part is cloud-init's copy
"""

PIP_LOG = """\
x nbcloud-bootstrap: step venv: start
Collecting jupyterlab
ERROR: Could not find a version that satisfies the requirement nope==9 (from versions: none)
ERROR: No matching distribution found for nope==9
x nbcloud-bootstrap: step venv failed (exit 1, line 112)
"""


def test_the_cause_is_the_failed_steps_own_error_lines() -> None:
    cause = failure_cause(UV_LOG)
    assert cause is not None and cause.startswith("step venv failed: error: No solution found")
    assert "Because no-such-package-xyz was not found" in cause  # written after the "failed" line: a pipe
    assert "cloud-init's copy" not in cause
    pip = failure_cause(PIP_LOG)
    assert pip is not None and "No matching distribution found for nope==9" in pip and "Collecting" not in pip


def test_no_failed_step_no_cause_and_a_silent_step_names_its_exit() -> None:
    assert failure_cause("x nbcloud-bootstrap: step venv: start\n") is None
    silent = "x nbcloud-bootstrap: step data: start\nx nbcloud-bootstrap: step data failed (exit 32, line 130)\n"
    assert failure_cause(silent) == "step data failed (exit 32, line 130)"


def test_launch_intents_in_the_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    store.begin_launch(LaunchIntent("abc", "demo", "sandbox", "us-east-1", None, 100.0))
    assert [i.launch_id for i in store.launches("demo")] == ["abc"]
    store.mark_launch("abc", run_at=101.0, instance_id="i-1")
    assert store.launch("abc") == LaunchIntent("abc", "demo", "sandbox", "us-east-1", None, 100.0, 101.0, "i-1")
    store.mark_launch("abc", outcome="rolled-back")
    assert store.launches("demo") == [] and [i.launch_id for i in store.launches(outcomes=("rolled-back",))] == ["abc"]
    store.prune_launches(now=100.0 + 8 * 86400)
    assert store.launch("abc") is None
    assert stat.S_IMODE(os.stat(tmp_path / "state.db").st_mode) == 0o600


def test_a_recovery_says_what_it_removed_and_what_is_left() -> None:
    done = describe_recovery(Recovery("oc1", "abc", ["instance i-1", "key pair nbcloud-oc1-abc"]))
    assert done == "launch abc of 'oc1': removed instance i-1, key pair nbcloud-oc1-abc"
    left = describe_recovery(Recovery("oc1", "abc", [], ["security group sg-1 (DependencyViolation)"]))
    assert left.startswith("launch abc of 'oc1': removed nothing; could not remove security group sg-1"), left
    nothing = describe_recovery(Recovery("oc1", "abc", []))  # it read "removed nothing had been made yet"
    assert nothing == "launch abc of 'oc1': nothing had been made yet"
    assert "`nbcloud down oc1`" in left


def test_an_interrupt_says_what_was_checked_never_a_blanket_claim(tmp_path: Path) -> None:
    script = """
import click
from nbcloud.cli.output import run_cli
from nbcloud.errors import Interrupted

@click.group()
def g(): pass

@g.command()
def checked(): raise Interrupted("interrupted — rolled back launch abc of 'x': removed instance i-1", "")

@g.command()
def plain(): raise KeyboardInterrupt

run_cli(g)
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    checked = subprocess.run([sys.executable, "-c", script, "checked"], capture_output=True, text=True, env=env)
    assert checked.returncode == 130
    assert checked.stderr.strip().endswith("error: interrupted — rolled back launch abc of 'x': removed instance i-1")
    plain = subprocess.run([sys.executable, "-c", script, "plain"], capture_output=True, text=True, env=env)
    assert plain.returncode == 130 and "nothing half-created" not in plain.stderr
    assert "`nbcloud status`" in plain.stderr
