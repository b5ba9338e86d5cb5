"""The uv cache is warmed with the wheelhouse at the path instances see it at (uv keys find-links wheels by path)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from nbcloud.sandbox.wheelhouse import _seen_at_argv

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="a mount namespace of its own needs root and unshare")


def test_wheelhouse_is_seen_at_the_instances_path_and_nothing_stays_on_the_machine(tmp_path: Path) -> None:
    wheelhouse = tmp_path / "wh"
    wheelhouse.mkdir()
    (wheelhouse / "demo-1.0-py3-none-any.whl").write_bytes(b"not really a wheel")
    seen_at = f"/mnt/nbcloud-test-{os.getpid()}/wheelhouse"
    out = subprocess.run([*_seen_at_argv(wheelhouse, seen_at), "sh", "-c", f'ls "{seen_at}"; touch "{seen_at}/x"'],
                         capture_output=True, text=True)
    assert out.stdout.split() == ["demo-1.0-py3-none-any.whl"]
    assert "Read-only file system" in out.stderr  # bound read-only, as nspawn's --bind-ro gives it to instances
    assert not Path(seen_at).parent.exists()  # the tmpfs and the bind lived in that namespace only
    assert sorted(p.name for p in wheelhouse.iterdir()) == ["demo-1.0-py3-none-any.whl"]
