"""`nbcloud sync` pushes what git would track: git's own ignore answer, negations included (real git, real rsync)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not (shutil.which("git") and shutil.which("rsync")), reason="needs git and rsync")


def _push(local: Path, dest: Path, delete: bool = False) -> set[str]:
    from nbcloud.ops.tunnels import git_ignored, rsync_argv

    argv, stdin = rsync_argv(shutil.which("rsync") or "rsync", "ssh", local, f"{dest}/", pull=False, delete=delete,
                             git_ignored=git_ignored(local))
    subprocess.run(argv, input=stdin, check=True, capture_output=True, timeout=60)
    return {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()}


def _project(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "build").mkdir()
    (root / ".gitignore").write_text("*.log\n!keep.log\nbuild/\n")
    for name in ("a.log", "keep.log", "sub/z.log", "sub/kept.txt", "build/out.o", "we[ird]*.txt", "nb.ipynb"):
        (root / name).write_text(name)
    return root


def test_git_negations_are_honoured(tmp_path: Path) -> None:
    local = _project(tmp_path / "proj")
    subprocess.run(["git", "init", "-q", str(local)], check=True, timeout=30)
    pushed = _push(local, tmp_path / "remote")
    assert pushed == {".gitignore", "keep.log", "sub/kept.txt", "we[ird]*.txt", "nb.ipynb"}


def test_delete_keeps_ignored_files_on_the_instance(tmp_path: Path) -> None:
    local = _project(tmp_path / "proj")
    subprocess.run(["git", "init", "-q", str(local)], check=True, timeout=30)
    remote = tmp_path / "remote"
    (remote / "build").mkdir(parents=True)
    (remote / "build" / "made-there.o").write_text("x")
    (remote / "gone.txt").write_text("x")
    pushed = _push(local, remote, delete=True)
    assert "build/made-there.o" in pushed and "gone.txt" not in pushed and "keep.log" in pushed


def test_outside_git_rsync_reads_gitignore_itself(tmp_path: Path) -> None:
    from nbcloud.ops.tunnels import git_ignored

    local = _project(tmp_path / "plain")
    assert git_ignored(local) is None
    pushed = _push(local, tmp_path / "remote")
    assert "a.log" not in pushed and "build/out.o" not in pushed and "sub/kept.txt" in pushed
