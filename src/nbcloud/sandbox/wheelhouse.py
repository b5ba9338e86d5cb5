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
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import SandboxError

__all__ = [
    "INSTANCE_UV_CACHE",
    "UvCacheSeeder",
    "download_summary",
    "ensure_extra_wheels",
    "ensure_uv_cache",
    "ensure_wheelhouse",
    "wait_uv_cache_seed",
    "warm_uv_cache",
    "wheelhouse_root",
]

#: Where an instance's uv cache lives on its own root disk. The daemon fills it with hard links to the machine-wide
#: cache at launch: uv hard-links from its cache into the venv, which only works within one mount, and the
#: machine-wide cache reaches an instance through a bind mount of its own (a copy instead: ~4-8 s vs ~0.5 s).
INSTANCE_UV_CACHE = "/opt/.nbcloud-uv-cache"


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
    from ..remote.packages import all_requirements

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
    log_path = root / "pip-download.log"
    say(f"downloading {len(reqs)} packages and their dependencies into {target} (once per machine; "
        f"pip's log: {log_path})")
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary=:all:",
           "--python-version", version, "-d", str(partial), *reqs]
    started = time.monotonic()
    code, tail = _run_logged(cmd, log_path)
    if code != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise SandboxError(f"pip download for the sandbox wheelhouse failed: {' | '.join(tail[-3:])}",
                           f"see {log_path}; check that the package index is reachable (pip config), then retry")
    wheels = list(partial.glob("*.whl"))
    say(download_summary(len(wheels), sum(w.stat().st_size for w in wheels), time.monotonic() - started))
    for path in [partial, *partial.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    (partial / ".complete").write_text("\n".join(reqs) + "\n")
    try:
        os.replace(partial, target)
    except OSError:  # another process finished first
        shutil.rmtree(partial, ignore_errors=True)
    os.chmod(root, 0o755)
    return target


def ensure_extra_wheels(wheelhouse: Path, subdir: str, requirements: list[str],
                        progress: Callable[[str], None] | None = None) -> Path:
    """Download ``requirements`` (with their dependencies) into ``wheelhouse/subdir`` once: packages that only some
    instances install (a cluster's engine), kept out of the wheelhouse every instance's bootstrap resolves against.
    Instances see it at once: the wheelhouse reaches them through a bind mount of the directory."""
    target = wheelhouse / subdir
    stamp = target / ".complete"
    wanted = "\n".join(sorted(requirements)) + "\n"
    if stamp.exists() and stamp.read_text() == wanted:
        return target
    say = progress or (lambda _msg: None)
    partial = wheelhouse / f".{subdir}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    log_path = wheelhouse.parent / f"pip-download-{subdir}.log"
    say(f"downloading {', '.join(requirements)} into the sandbox's wheelhouse (once per machine)")
    started = time.monotonic()
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary=:all:",
           "--python-version", instance_python_version(), "-d", str(partial), *requirements]
    code, tail = _run_logged(cmd, log_path)
    if code != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise SandboxError(f"pip download of {subdir} failed: {' | '.join(tail[-3:])}", f"see {log_path}")
    wheels = list(partial.glob("*.whl"))
    say(download_summary(len(wheels), sum(w.stat().st_size for w in wheels), time.monotonic() - started))
    for path in [partial, *partial.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    (partial / ".complete").write_text(wanted)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    return target


def _run_logged(cmd: list[str], log_path: Path) -> tuple[int, list[str]]:
    """Run ``cmd`` with its output in ``log_path`` (not on the user's terminal) → (exit code, its last lines)."""
    with open(log_path, "w") as log:
        code = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT).returncode
    lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    return code, lines[-10:]


def download_summary(files: int, size: int, seconds: float) -> str:
    """The one line a download ends with: what, how much, how fast."""
    mb = size / 1e6
    return (f"downloaded {files} wheel{'s' if files != 1 else ''}, {mb:.1f} MB in {seconds:.1f} s "
            f"({mb / max(seconds, 0.001):.1f} MB/s)")


def ensure_uv_cache(inside: bool = False) -> Path:
    """A uv cache shared by every sandbox instance on this machine (owned by the instances' user, uid 1000).

    ``inside``: the one for instances that see the wheelhouse at ``/mnt/nbcloud-sandbox/wheelhouse`` (netns, os),
    apart from the one for loopback instances (the host's path): uv keys its entries by that path, so one cache
    for both would hold every wheel unpacked twice, and each instance's hard-link copy would be twice as long.
    """
    cache = wheelhouse_root().parent / ("uv-cache-inside" if inside else "uv-cache")
    cache.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):
        os.chown(cache, 1000, 1000)
    os.chmod(cache, 0o755)
    return cache


def _seen_at_argv(wheelhouse: Path, seen_at: str) -> list[str]:
    """A command prefix that runs the rest with ``wheelhouse`` bind-mounted read-only at ``seen_at``, in a mount
    namespace of its own: a tmpfs hides the top directory of ``seen_at`` (``/mnt``) there only, so nothing is made
    or mounted on the machine itself."""
    top = "/" + Path(seen_at).parts[1]
    script = ('set -e; mount -t tmpfs -o size=1m,mode=0755 nbcloud-warm "$1"; mkdir -p "$2"; '
              'mount --bind "$3" "$2"; mount -o remount,bind,ro "$2"; shift 3; exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", top, seen_at,
            str(wheelhouse)]


def warm_uv_cache(wheelhouse: Path, cache: Path, progress: Callable[[str], None] | None = None,
                  seen_at: str | None = None) -> None:
    """Unpack every wheelhouse package into the machine-wide uv cache once (outside any namespace).

    Instances install from per-instance hard-link copies of this cache, so they never unpack a wheel themselves,
    provided the cache knows the wheels by the path the instances name: uv keys a ``--find-links`` wheel by its
    path, so a cache warmed from ``~/.cache/nbcloud/wheelhouse/…`` is a miss for ``/mnt/nbcloud-sandbox/wheelhouse``
    and every instance unzipped all ~105 wheels again (2-5 s of its bootstrap's venv step, more under load, and
    ~350 MB more in its layer). ``seen_at``: that path (netns and os modes, root), bound there while warming.
    """
    from ..remote.packages import all_requirements

    suffix = f"-{hashlib.sha256(seen_at.encode()).hexdigest()[:8]}" if seen_at else ""
    stamp = cache / f".nbcloud-warm-{wheelhouse.name}{suffix}"
    uv = shutil.which("uv")
    if stamp.exists() or uv is None:
        return
    prefix: list[str] = []
    links = str(wheelhouse)
    if seen_at:
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            return  # instances then unpack the wheels themselves, only slower
        prefix, links = _seen_at_argv(wheelhouse, seen_at), seen_at
    (progress or (lambda _msg: None))("warming the sandbox's uv cache (once per package set)")
    venv = cache.parent / f".warm-venv-{os.getpid()}"
    shutil.rmtree(venv, ignore_errors=True)
    env = {**os.environ, "UV_CACHE_DIR": str(cache)}
    try:
        subprocess.run([uv, "venv", "-q", str(venv), "-p", INSTANCE_PYTHON], check=True, capture_output=True,
                       env=env, timeout=300)
        subprocess.run([*prefix, uv, "pip", "install", "-q", "-p", str(venv / "bin" / "python"), "--no-index",
                        "--find-links", links, *all_requirements()], check=True, capture_output=True,
                       env=env, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        # not fatal: instances then unpack the wheels themselves, only slower
        (progress or (lambda _msg: None))(f"could not warm the uv cache ({exc}); instances install more slowly")
        return
    finally:
        shutil.rmtree(venv, ignore_errors=True)
    # the cache belongs to the instances' user (see ensure_uv_cache): it may then hard-link from it too
    owner = cache.stat()
    subprocess.run(["chown", "-R", f"{owner.st_uid}:{owner.st_gid}", str(cache)], check=False, capture_output=True)
    stamp.write_text("warm\n")


def _seed_paths(root: Path) -> tuple[Path, Path]:
    target = root / INSTANCE_UV_CACHE.lstrip("/")
    return target, target.with_name(target.name + ".pending")


def _uv_lock_files(cache: Path) -> list[Path]:
    """uv's own lock files (``.lock``), not files of the unpacked packages (archive-v0 holds those)."""
    found = []
    for directory, subdirs, files in os.walk(cache):
        subdirs[:] = [d for d in subdirs if not d.startswith("archive-")]
        found += [Path(directory) / f for f in files if f == ".lock"]
    return found


REFILL_DELAY = 10.0  # seconds after a launch took the spare


class UvCacheSeeder:
    """Hard-link copies of the machine-wide uv cache for new instances' root disks.

    A copy takes ~0.4-1 s (15 000 links), so one spare is made ahead of time and a launch only renames it into
    place; the next spare is made in the background. Without a spare the copy runs in the background and only
    user-data waits for it (:func:`wait_uv_cache_seed`), never sshd. A failed copy leaves no cache: uv then
    unpacks the wheels itself, only slower.
    """

    def __init__(self, cache: Path, spare_dir: Path) -> None:
        self.cache = cache
        self.spare = spare_dir / "uv-cache"
        self._lock = threading.Lock()

    def _link_copy(self, target: Path) -> bool:
        partial = target.with_name(target.name + ".partial")
        try:
            shutil.rmtree(partial, ignore_errors=True)
            # lowest CPU priority: booting instances (sshd, their init) come first on a small machine
            subprocess.run(["nice", "-n", "19", "cp", "-al", str(self.cache), str(partial)], check=True,
                           capture_output=True, timeout=300)
            owner = self.cache.stat()
            for lock in _uv_lock_files(partial):  # a lock shared by inode would serialize instances' installs
                lock.unlink()
                lock.touch()
                os.chown(lock, owner.st_uid, owner.st_gid)
                os.chmod(lock, 0o666)
            partial.rename(target)
            return True
        except (OSError, subprocess.SubprocessError):
            shutil.rmtree(partial, ignore_errors=True)
            return False

    def refill(self, delay: float = 0.0) -> None:
        def make_spare() -> None:
            time.sleep(delay)
            with self._lock:
                if not self.spare.exists():
                    self.spare.parent.mkdir(parents=True, exist_ok=True)
                    self._link_copy(self.spare)

        threading.Thread(target=make_spare, name="uv-cache spare", daemon=True).start()

    def seed(self, root: Path) -> None:
        target, pending = _seed_paths(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        taken = False
        if self._lock.acquire(blocking=False):  # never wait for a spare being made: the boot goes on without it
            try:
                self.spare.rename(target)
                taken = True
            except OSError:
                pass
            finally:
                self._lock.release()
        if not taken:
            pending.touch()

            def copy() -> None:
                try:
                    self._link_copy(target)
                finally:
                    pending.unlink(missing_ok=True)

            threading.Thread(target=copy, name=f"uv-cache seed {root.parent.name}", daemon=True).start()
        # later: not while the instance that took the spare installs and starts Jupyter on the same 2 cores
        self.refill(delay=REFILL_DELAY)


def wait_uv_cache_seed(root: Path, timeout: float = 60.0) -> None:
    _target, pending = _seed_paths(root)
    deadline = time.monotonic() + timeout
    while pending.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
