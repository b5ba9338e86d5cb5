"""Local-port helpers and reading tunnel state files (no network beyond binding 127.0.0.1)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nbcloud.config import write_private
from nbcloud.errors import TunnelError, UsageError
from nbcloud.ssh import tunnel
from nbcloud.ssh.tunnel import TunnelState


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NBCLOUD_HOME", str(tmp_path))
    return tmp_path


def listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_port_helpers() -> None:
    with listener() as s:
        busy = s.getsockname()[1]
        assert not tunnel.port_is_free(busy)
        with pytest.raises(UsageError, match=f"local port {busy} is in use by another program") as info:
            tunnel.pick_local_port(busy)
        assert info.value.hint == "pass --port P or stop that program"
        picked = tunnel.pick_local_port(None, default=busy)
        assert picked != busy and tunnel.port_is_free(picked)
    assert tunnel.port_is_free(busy)


def write_state(name: str, **fields: object) -> None:
    base = {"name": name, "state": "up", "since": "2024-01-01T00:00:00.000Z", "reason": "connected"}
    write_private(tunnel.state_path(name), TunnelState(**{**base, **fields}).to_json())  # type: ignore[arg-type]


def test_read_state_missing_is_none() -> None:
    assert tunnel.read_state("nope") is None


def test_dead_supervisor_reads_as_down() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    write_state("x", pid=proc.pid, ssh_pid=proc.pid)
    st = tunnel.read_state("x")
    assert st is not None and st.state == "down" and "not running" in st.reason and st.ssh_pid is None
    with pytest.raises(TunnelError, match="down"):
        tunnel.wait_until_up("x", timeout=1)


def test_a_foreign_live_pid_is_not_our_supervisor() -> None:
    write_state("x", pid=os.getpid())  # alive, but pytest is not a tunnel supervisor
    st = tunnel.read_state("x")
    assert st is not None and st.state == "down"
    assert tunnel.stop_supervisor("x") is False  # and it is never signalled


def test_wait_until_up_times_out_with_last_state() -> None:
    with pytest.raises(TunnelError, match="did not come up"):
        tunnel.wait_until_up("never", timeout=0.1)
