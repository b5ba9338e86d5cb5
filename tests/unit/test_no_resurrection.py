"""Issue 14 #7: nothing brings a sandbox back, and its instances' local processes go with it.

A sandbox is started by `nbcloud sandbox start` only; a background process (a tunnel's resolver) that finds it
gone reports the instance gone and stops the local lab; `sandbox reset` stops this machine's tunnels and labs to
its instances and forgets them. No network: the "lab" and "supervisor" are sleeping processes whose command lines
look like theirs, and the sandbox directory never holds a daemon.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nbcloud.config import write_private
from nbcloud.ops import Context
from nbcloud.state import Record

LAB_PORT = 1  # never listened on: only the lab's command line names it


@pytest.fixture
def no_sandbox(nbcloud_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A sandbox directory with no daemon; a start attempt would fail at once (and never touch a network)."""
    directory = tmp_path / "sandbox"
    monkeypatch.setenv("NBCLOUD_SANDBOX_DIR", str(directory))
    monkeypatch.setenv("NBCLOUD_SANDBOX_MODE", "not-a-mode")
    return directory


def _sleeper(*marker: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *marker],
                            start_new_session=True)


@pytest.fixture
def local_processes(no_sandbox: Path) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Instance `demo` on the sandbox, with a local lab and a tunnel supervisor running for it."""
    ctx = Context.create()
    ctx.store.put(Record(name="demo", provider="sandbox", region="us-east-1", instance_id="i-demo", state="running"))
    lab = _sleeper("jupyterlab", f"--ServerApp.port={LAB_PORT}")
    supervisor = _sleeper("nbcloud.ssh.tunnel")
    lab_file = ctx.paths.data_dir / "lab" / "demo.json"
    lab_file.parent.mkdir(parents=True, exist_ok=True)
    write_private(lab_file, json.dumps({"pid": lab.pid, "port": LAB_PORT, "root_dir": "/", "url": "x",
                                        "gateway_url": "x", "local_port": LAB_PORT, "name": "demo",
                                        "log_file": "x"}))
    ctx.paths.tunnels_dir.mkdir(parents=True, exist_ok=True)
    write_private(ctx.paths.tunnels_dir / "demo.json", json.dumps({
        "name": "demo", "state": "up", "since": "2026-11-30T00:00:00Z", "reason": "connected",
        "pid": supervisor.pid}))
    procs = {"lab": lab, "supervisor": supervisor}
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _ended(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> bool:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def test_provider_never_starts_the_sandbox(no_sandbox: Path) -> None:
    from nbcloud.providers.registry import SandboxNotRunning, get_provider

    with pytest.raises(SandboxNotRunning) as caught:
        get_provider("sandbox")
    assert "nbcloud sandbox start" in caught.value.one_line()
    assert not no_sandbox.exists()


def test_resolver_finds_the_sandbox_gone_and_stops_the_lab(local_processes: dict[str, subprocess.Popen[bytes]],
                                                            no_sandbox: Path) -> None:
    from nbcloud.ops.tunnels import tunnel_resolver

    started = time.monotonic()
    result = tunnel_resolver("demo")()
    assert result.state == "gone", result  # the supervisor then exits (STOPPED_REASONS)
    assert _ended(local_processes["lab"]), "the local lab outlived its instance"
    assert not no_sandbox.exists(), "the resolver started a sandbox"
    assert time.monotonic() - started < 30


def test_sandbox_reset_stops_tunnels_and_labs_and_forgets_the_instances(
        local_processes: dict[str, subprocess.Popen[bytes]], nbcloud_home: Path) -> None:
    from nbcloud.ops.sandbox import reset_sandbox

    result = reset_sandbox()
    assert result["forgotten"] == ["demo"]
    assert _ended(local_processes["supervisor"]) and _ended(local_processes["lab"])
    ctx = Context.create()
    assert ctx.store.get("demo") is None
    assert not (ctx.paths.data_dir / "lab" / "demo.json").exists()


def test_sandbox_reset_does_not_recreate_a_deleted_home(no_sandbox: Path, nbcloud_home: Path) -> None:
    from nbcloud.ops.sandbox import reset_sandbox

    assert not nbcloud_home.exists()
    assert reset_sandbox()["forgotten"] == []
    assert not nbcloud_home.exists()
