"""Falling back to a plain tunnel when the instance cannot run the relay (no python3, or one older than 3.9)."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

from nbcloud.cli.status_text import tunnel_cell, tunnel_line
from nbcloud.ops.tunnels import fallback_note
from nbcloud.ssh.resumable import _LOADER, RELAY_TOO_OLD
from nbcloud.ssh.tunnel import relay_unavailable


def _run_loader_as(version: tuple[int, int, int]) -> subprocess.CompletedProcess[str]:
    """The real loader under a python that reports ``version`` (the check must come before anything else)."""
    code = f"import sys; sys.version_info = {version!r}; exec(compile({_LOADER!r}, '<loader>', 'exec'))"
    return subprocess.run([sys.executable, "-c", code, "/nonexistent/relay"], input="", capture_output=True,
                          text=True, timeout=30)


def test_the_loader_refuses_an_old_python_in_a_way_the_supervisor_reads_as_fall_back() -> None:
    done = _run_loader_as((3, 8, 10))
    assert done.returncode == RELAY_TOO_OLD
    why = relay_unavailable(done.returncode, done.stderr.splitlines(), RELAY_TOO_OLD)
    assert why == "python3 on the instance is 3.8, the relay needs 3.9 or newer"


def test_a_new_enough_python_goes_past_the_check() -> None:
    done = _run_loader_as((3, 9, 0))  # reads its files from an empty stdin: exits 3, no word about the version
    assert done.returncode == 3 and "older than" not in done.stderr
    assert relay_unavailable(done.returncode, done.stderr.splitlines(), RELAY_TOO_OLD) is None


def test_no_python3_in_any_shell_wording_falls_back() -> None:
    for line in ("bash: line 1: python3: command not found", "sh: 1: python3: not found",
                 "zsh:1: command not found: python3 ", "env: python3: No such file or directory"):
        verdict = relay_unavailable(127, ["debug1: something", line], RELAY_TOO_OLD)
        assert verdict == "the instance has no python3, which the relay needs", line


def test_other_failures_are_retried_not_answered_by_a_fallback() -> None:
    assert relay_unavailable(255, ["ssh: connect to host 10.0.0.1 port 22: Connection timed out"]) is None
    assert relay_unavailable(1, ["nbcloud relay: cannot reach the daemon"]) is None
    assert relay_unavailable(127, ["bash: foo: command not found"]) is None  # not python3
    assert relay_unavailable(-15, ["nbcloud-relay: python 3.8 is older than 3.9"]) is None  # killed: we cut it
    assert relay_unavailable(None, []) is None


def test_status_and_connect_say_the_mode_and_why_it_is_plain() -> None:
    plain = SimpleNamespace(name="a", tunnel="up", local_port=8888, tunnel_mode="plain", forwards=[],
                            held_connections=0, last_outage=None,
                            tunnel_fallback="the instance has no python3, which the relay needs")
    assert tunnel_cell(plain) == "up:8888 plain"
    assert "plain tunnel (the instance has no python3" in tunnel_line(plain)
    resumable = SimpleNamespace(name="a", tunnel="up", local_port=8888, tunnel_mode="resumable", forwards=[],
                                held_connections=0, last_outage=None, tunnel_fallback=None)
    assert tunnel_cell(resumable) == "up:8888 resumable" and tunnel_line(resumable) == ""
    down = SimpleNamespace(name="a", tunnel="down", local_port=None, tunnel_mode=None)
    assert tunnel_cell(down) == "down"
    note = fallback_note("the instance has no python3, which the relay needs")
    assert note is not None and "\n" not in note and "will not outlive an outage" in note
    assert fallback_note(None) is None
