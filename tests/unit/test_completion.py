"""Shell completion: instance names from the local store, and the right program name for `jupyter nbcloud`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import adopted_machine


def _complete(home: Path, words: str, argv0: str = "nbcloud", var: str = "_NBCLOUD_COMPLETE",
              mode: str = "bash_complete") -> subprocess.CompletedProcess[str]:
    env = {"NBCLOUD_HOME": str(home), "HOME": str(home), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": os.pathsep.join(sys.path), var: mode, "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}
    code = f"import sys\nsys.argv[0] = {argv0!r}\nfrom nbcloud.cli.app import main\nmain()"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)


def test_instance_names_complete_from_the_local_store(tmp_path: Path) -> None:
    for name in ("box", "bigbox", "lab"):
        adopted_machine(tmp_path, name)
    done = _complete(tmp_path, "nbcloud connect b")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["plain,bigbox", "plain,box"]
    assert _complete(tmp_path, "nbcloud status ").stdout.split() == ["plain,bigbox", "plain,box", "plain,lab"]
    assert _complete(tmp_path, "nbcloud logs l").stdout.split() == ["plain,lab"]


def test_no_store_completes_nothing_and_makes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "fresh"
    done = _complete(home, "nbcloud ssh ")
    assert done.returncode == 0 and done.stdout.strip() == "", done
    assert not (home / "state.db").exists()


def test_jupyter_nbcloud_completes_under_its_own_name(tmp_path: Path) -> None:
    done = _complete(tmp_path, "", argv0="/usr/local/bin/jupyter-nbcloud", var="_JUPYTER_NBCLOUD_COMPLETE",
                     mode="bash_source")
    assert done.returncode == 0, done.stderr
    assert "_JUPYTER_NBCLOUD_COMPLETE=bash_complete" in done.stdout and "jupyter-nbcloud" in done.stdout
