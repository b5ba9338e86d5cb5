"""`status`'s agent reads: started from the store before the cloud answers, kept, dropped or made again after.

The reads run real processes: a stand-in `ssh` first on PATH (a shell script that logs the alias it was given and
answers like the agent's state file), so what is started, waited for and killed is what nbcloud really does.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from nbcloud.ops.agent_state import AgentReads, plan_reads, with_agent_state
from nbcloud.ops.lifecycle import InstanceView

FAKE_SSH = """#!/bin/sh
for arg; do [ "$arg" = "--" ] && break; alias="$arg"; done
echo "$alias" >> "$FAKE_SSH_LOG"
case "$alias" in
  nb-slow*) exec sleep 60 ;;
  nb-dead*) exit 255 ;;
esac
if [ -n "$FAKE_SSH_BARRIER" ]; then  # answer only once that many reads have started: they run at once, or time out
  i=0
  while [ "$(wc -l < "$FAKE_SSH_LOG")" -lt "$FAKE_SSH_BARRIER" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
fi
echo '{"idle_seconds": 42, "reason": "idle 42s of 3600s"}'
"""

ROW = InstanceView(name="a", instance_id="i-a", state="running", instance_type="t3.medium", region="us-east-1",
                   provider="sandbox", host="10.0.0.2")


@pytest.fixture
def fake_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The log the stand-in `ssh` appends each alias it is run for to."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(FAKE_SSH)
    (bin_dir / "ssh").chmod(0o755)
    log = tmp_path / "ssh.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SSH_LOG", str(log))
    return log


def _ctx(tmp_path: Path) -> Any:
    return SimpleNamespace(paths=SimpleNamespace(ssh_config=tmp_path / "ssh_config"))


def test_plan_keeps_reads_to_the_reported_address_and_redoes_or_drops_the_rest() -> None:
    started = {"a": "10.0.0.2", "b": "10.0.0.3", "d": "10.0.0.5"}
    running = {"a": "10.0.0.2", "c": "10.0.0.4", "d": "10.0.0.9"}
    plan = plan_reads(started, running)
    assert plan.keep == {"a"}
    assert sorted(plan.start) == ["c", "d"], "c was not known running; d moved: its read went to the old address"
    assert plan.drop == {"b", "d"}
    nothing_runs = plan_reads({"x": "10.0.0.6"}, {})
    assert nothing_runs.drop == {"x"} and not nothing_runs.keep and not nothing_runs.start


def test_early_reads_are_used_dropped_or_made_again(tmp_path: Path, fake_ssh: Path) -> None:
    reads = AgentReads(_ctx(tmp_path))
    reads.start([("a", "10.0.0.2"), ("slow", "10.0.0.3"), ("d", "10.0.0.5")])
    slow, moved = reads._reads["slow"][1], reads._reads["d"][1]
    assert slow is not None and moved is not None
    moved.process.wait(timeout=10)  # answered already: still not used, its address is no longer the instance's
    views = [ROW,
             replace(ROW, name="slow", instance_id="i-s", state="stopped", host=None),  # the store was behind
             replace(ROW, name="c", instance_id="i-c", host="10.0.0.4"),  # not known running when reads began
             replace(ROW, name="d", instance_id="i-d", host="10.0.0.9"),  # a stop/start moved it
             replace(ROW, name="e", instance_id="i-e", managed_here=False)]  # another machine's: no keys here
    rows = {v.name: v for v in reads.merge(views)}
    assert [rows[n].idle_seconds for n in "acd"] == [42.0] * 3
    assert rows["slow"].idle_reason is None and rows["e"].idle_reason == ROW.idle_reason
    assert slow.process.returncode == -9, "a read nobody needs is killed, not waited for"
    # one read each, d's twice; the slow one may have been killed before it logged its alias
    assert sorted(a for a in fake_ssh.read_text().split() if a != "nb-slow") == ["nb-a", "nb-c", "nb-d", "nb-d"]
    assert reads._reads == {}


def test_reads_run_at_once_and_an_unreachable_one_is_unknown(tmp_path: Path, fake_ssh: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    names = ["a", "b", "c", "d", "dead"]
    monkeypatch.setenv("FAKE_SSH_BARRIER", str(len(names)))  # each answers only when all five have started
    views = [replace(ROW, name=n, instance_id=f"i-{n}") for n in names]
    views.append(replace(ROW, name="off", instance_id="i-off", state="stopped", host=None))
    rows = {v.name: v for v in with_agent_state(_ctx(tmp_path), views)}
    assert [rows[n].idle_seconds for n in "abcd"] == [42.0] * 4
    assert rows["dead"].idle_reason == "agent unreachable: unknown"
    assert rows["off"].idle_seconds is None and rows["off"].idle_reason is None


def test_reads_beyond_the_limit_wait_for_a_place(tmp_path: Path, fake_ssh: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from nbcloud.ops import agent_state

    monkeypatch.setattr(agent_state, "AGENT_STATE_AT_ONCE", 2)
    names = ["a", "b", "c", "d", "e"]
    reads = AgentReads(_ctx(tmp_path))
    reads.start((n, "10.0.0.2") for n in names)
    assert len(reads._reads) == 2 and list(reads._waiting) == ["c", "d", "e"]
    rows = reads.merge([replace(ROW, name=n, instance_id=f"i-{n}") for n in names])
    assert [r.idle_seconds for r in rows] == [42.0] * 5
    assert sorted(fake_ssh.read_text().split()) == [f"nb-{n}" for n in names]
