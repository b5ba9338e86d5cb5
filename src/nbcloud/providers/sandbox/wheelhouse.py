"""The machine-wide wheelhouse and uv cache that sandbox instances install from (they have no internet).

The wheelhouse is ``$NBCLOUD_WHEELHOUSE`` or ``~/.cache/nbcloud/wheelhouse``, one subdirectory per hash of the
requirement list, filled once with ``python -m pip download`` (outside any namespace) and then reused by every
sandbox, so fresh test sandboxes never download again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ...errors import SandboxError

__all__ = ["ensure_uv_cache", "ensure_wheelhouse", "wheelhouse_root"]


def wheelhouse_root() -> Path:
    override = os.environ.get("NBCLOUD_WHEELHOUSE")
    return Path(override) if override else Path.home() / ".cache" / "nbcloud" / "wheelhouse"


INSTANCE_PYTHON = "/usr/bin/python3"  # what instances run (Debian's); the host's Python may be newer


def instance_python_version() -> str:
    try:
        out = subprocess.run([INSTANCE_PYTHON, "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxError(f"{INSTANCE_PYTHON} does not run: {exc}", "apt-get install -y python3") from exc
    return out


def _key(requirements: list[str], python_version: str) -> str:
    text = "\n".join(sorted(requirements)) + f"\npython {python_version}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ensure_wheelhouse(progress: Callable[[str], None] | None = None, requirements: list[str] | None = None) -> Path:
    """Return a complete wheelhouse for the remote packages, downloading it the first time (about a minute)."""
    from ...remote.packages import all_requirements

    say = progress or (lambda _msg: None)
    reqs = requirements if requirements is not None else all_requirements()
    root = wheelhouse_root()
    version = instance_python_version()
    target = root / _key(reqs, version)
    if (target / ".complete").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    partial = root / f".{target.name}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    say(f"downloading {len(reqs)} packages and their dependencies into {target} (once per machine)")
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary=:all:",
           "--python-version", version, "-d", str(partial), *reqs]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        line = line.strip()
        tail = [*tail[-9:], line]
        if line.startswith(("Collecting", "Saved")):
            say(line)
    if proc.wait() != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise SandboxError(f"pip download for the sandbox wheelhouse failed: {' | '.join(tail[-3:])}",
                           "check that the package index is reachable (pip config), then retry")
    for path in [partial, *partial.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    (partial / ".complete").write_text("\n".join(reqs) + "\n")
    try:
        os.replace(partial, target)
    except OSError:  # another process finished first
        shutil.rmtree(partial, ignore_errors=True)
    os.chmod(root, 0o755)
    return target


def ensure_uv_cache() -> Path:
    """A uv cache shared by every sandbox instance on this machine (owned by the instances' user, uid 1000)."""
    cache = wheelhouse_root().parent / "uv-cache"
    cache.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):
        os.chown(cache, 1000, 1000)
    os.chmod(cache, 0o755)
    return cache
