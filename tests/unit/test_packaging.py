"""Packaging: the Apache-2.0 LICENSE ships in the wheel, with PEP 639 metadata (an SPDX expression)."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Where a setuptools wheel can be found without the network (this machine's local mirror; or point it elsewhere).
LOCAL_WHEELS = os.environ.get("NBCLOUD_TEST_WHEELS", "/opt/pypi/files")


def test_license_metadata_in_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert project["project"]["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    requires = project["build-system"]["requires"]
    floor = next(r for r in requires if r.startswith("setuptools"))
    assert tuple(int(x) for x in re.findall(r"\d+", floor)[:1]) >= (77,), floor  # PEP 639 support


def _local_setuptools() -> bool:
    for wheel in glob.glob(os.path.join(LOCAL_WHEELS, "setuptools-*.whl")):
        major = re.match(r"setuptools-(\d+)", os.path.basename(wheel))
        if major and int(major.group(1)) >= 77:
            return True
    return False


def _copy_checkout(src: Path) -> None:
    """The checkout's files (tracked and untracked, not ignored) into ``src``: a build must not leave build/ or
    *.egg-info in the work tree."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           check=True, capture_output=True, timeout=30).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((ROOT / name).read_bytes())


@pytest.mark.skipif(not _local_setuptools(), reason=f"no setuptools>=77 wheel in {LOCAL_WHEELS} (offline build)")
def test_the_wheel_carries_the_license(tmp_path: Path) -> None:
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": LOCAL_WHEELS}  # offline: the local wheels only
    src = tmp_path / "src"  # a copy: the build must not leave build/ or *.egg-info in the work tree
    _copy_checkout(src)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "out"),
                           str(src)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "out").glob("nbcloud-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata and "License-File: LICENSE" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


@pytest.mark.skipif(not _local_setuptools(), reason=f"no setuptools>=77 wheel in {LOCAL_WHEELS} (offline build)")
def test_the_sdist_carries_the_license(tmp_path: Path) -> None:
    """The source archive too (the issue: no LICENSE in the repo, wheel or sdist)."""
    import tarfile

    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": LOCAL_WHEELS}
    tools = tmp_path / "tools"  # setuptools>=77 beside the interpreter's own, from the local wheels
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(tools), "setuptools>=77"],
                   check=True, capture_output=True, env=env, timeout=300)
    src = tmp_path / "src"
    _copy_checkout(src)
    out = tmp_path / "out"
    code = f"from setuptools import build_meta\nprint(build_meta.build_sdist({str(out)!r}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, timeout=300,
                          env={**env, "PYTHONPATH": str(tools)})
    assert done.returncode == 0, done.stderr[-2000:]
    with tarfile.open(out / done.stdout.split()[-1]) as tar:
        names = tar.getnames()
        pkg_info = tar.extractfile(next(n for n in names if n.count("/") == 1 and n.endswith("/PKG-INFO")))
        assert pkg_info is not None
        metadata = pkg_info.read().decode()
    assert any(n.count("/") == 1 and n.endswith("/LICENSE") for n in names), names[:20]
    assert "License-Expression: Apache-2.0" in metadata
