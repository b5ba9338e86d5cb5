"""The first `nbcloud sandbox start`: the extra is checked before any download; pip's log goes to a file."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from nbcloud.sandbox.wheelhouse import ensure_wheelhouse


def test_sandbox_start_without_the_extra_says_what_to_install(nbcloud_home: Path, tmp_path: Path) -> None:
    wheelhouse = tmp_path / "wheelhouse"
    code = ("import sys\nsys.modules['moto'] = None\nfrom nbcloud.cli.app import main\nmain(['sandbox', 'start'])")
    env = {**os.environ, "NBCLOUD_WHEELHOUSE": str(wheelhouse), "PIP_NO_INDEX": "1",  # never a download here
           "NBCLOUD_SANDBOX_SUBNET": os.environ.get("NBCLOUD_TEST_SANDBOX_SUBNET", "10.165.0.0/16").split(",")[0]}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done
    assert done.stderr.strip().splitlines() == [
        "error: the sandbox needs the [sandbox] extra (moto not installed) — pip install 'nbcloud[sandbox]'"]
    assert not wheelhouse.exists()  # nothing downloaded


def _tiny_wheel(directory: Path, name: str = "nbcloudprobe", version: str = "1.0") -> Path:
    """A valid pure-Python wheel made here: pip downloads it from a local --find-links, offline."""
    path = directory / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}.py": "X = 1\n", f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for arcname, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{arcname},sha256={digest},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    with zipfile.ZipFile(path, "w") as zf:
        for arcname, text in files.items():
            zf.writestr(arcname, text)
    return path


def test_a_fresh_wheelhouse_reports_one_line_and_keeps_pips_log(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    links = tmp_path / "links"
    links.mkdir()
    _tiny_wheel(links)
    monkeypatch.setenv("NBCLOUD_WHEELHOUSE", str(tmp_path / "wheelhouse"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # offline: only the local wheel above
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    said: list[str] = []
    target = ensure_wheelhouse(said.append, requirements=["nbcloudprobe"])
    assert (target / "nbcloudprobe-1.0-py3-none-any.whl").exists()
    assert not any(m.startswith(("Saved", "Collecting")) for m in said), said
    assert len(said) == 2, said
    log = tmp_path / "wheelhouse" / "pip-download.log"
    assert str(log) in said[0] and "Saved" in log.read_text()
    assert said[1].startswith("downloaded 1 wheel, 0.0 MB in ") and said[1].endswith(" MB/s)")


def test_download_summary() -> None:
    from nbcloud.sandbox.wheelhouse import download_summary

    assert download_summary(106, 101_300_000, 40.0) == "downloaded 106 wheels, 101.3 MB in 40.0 s (2.5 MB/s)"
    assert download_summary(1, 0, 0.0).startswith("downloaded 1 wheel, 0.0 MB in 0.0 s")
