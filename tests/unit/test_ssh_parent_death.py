"""Issue 14: an ssh that nbcloud runs dies with nbcloud. A `kill -9` of `up` left its ssh wait loop alive for up to
900 s; here the real OpenSSH client waits on a "server" that never answers (a ProxyCommand that only reads), its
parent is SIGKILLed, and no ssh naming the alias may be left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.helpers import wait_until


def _ssh_naming(alias: str) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "ssh " in line and alias in line.split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_ssh_child_dies_with_its_killed_parent(tmp_path: Path) -> None:
    alias = f"nb-orphan{os.getpid()}"
    config = tmp_path / "ssh_config"
    # no network at all: the "connection" is a process that reads and never answers (it ends on EOF)
    config.write_text(f"Host {alias}\n  ProxyCommand sh -c 'cat >/dev/null'\n  User nobody\n")
    parent = subprocess.Popen([sys.executable, "-c", (
        "import sys; from nbcloud.ssh import session; "
        f"session.run(__import__('pathlib').Path({str(config)!r}), {alias!r}, 'sleep 900', timeout=900, "
        "connect_timeout=60)")], env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        wait_until(lambda: _ssh_naming(alias), 20, what="the ssh child running")
        time.sleep(0.3)
        os.kill(parent.pid, signal.SIGKILL)  # `kill -9 PID`: nothing is passed on to the children
        parent.wait(timeout=10)
        wait_until(lambda: not _ssh_naming(alias), 2, what=f"no ssh {alias} left after its parent was killed")
    finally:
        for line in _ssh_naming(alias):
            os.kill(int(line.split()[0]), signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_a_child_whose_parent_died_before_its_death_signal_does_not_start() -> None:
    """A parent killed between the fork and setpriv's prctl never sends the signal: the child then sees another
    parent (init, a subreaper) than the one the prefix names, and must not go on to ssh. Its arguments pass
    through unchanged otherwise."""
    from nbcloud.ssh import session

    prefix = session._die_with_parent()
    if not prefix:
        pytest.skip("no setpriv")
    odd = "it's \"quoted\" $HOME; echo no"
    done = subprocess.run([*prefix, "printf", "%s|", odd, "two words"], capture_output=True, text=True, timeout=10)
    assert (done.returncode, done.stdout) == (0, f"{odd}|two words|")
    # the prefix a process made that is gone by the time its child runs (here: run by another process, this one)
    made_by_the_dead = json.loads(subprocess.run(
        [sys.executable, "-c", "import json; from nbcloud.ssh import session; "
         "print(json.dumps(session._die_with_parent()))"], capture_output=True, text=True, check=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))).stdout)
    done = subprocess.run([*made_by_the_dead, "echo", "started"], capture_output=True, text=True, timeout=10)
    assert done.returncode != 0 and "started" not in done.stdout
