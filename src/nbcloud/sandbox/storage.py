"""Snapshots and images in the sandbox: directories copied the way EBS copies blocks.

A volume is ``<sandbox>/volumes/<vol-id>``; a snapshot ``<sandbox>/snapshots/<snap-id>`` (a copy of its volume,
made in the background while moto reports it ``pending``); a volume made from a snapshot starts as a copy of it;
an image ``<sandbox>/images/<ami-id>/root`` is a copy of the instance's root volume (``pending`` until copied), and an
instance launched from it starts with a copy of that root (see :func:`disk.prepare_root_from_image`).
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .wheelhouse import INSTANCE_UV_CACHE

__all__ = ["Storage", "Trash"]

log = logging.getLogger("nbcloud.sandbox.storage")


def copy_tree(source: Path, target: Path, link: tuple[str, ...] = ()) -> None:
    """``cp -a`` (owners, modes, hard links, sparse files kept); the target must not exist.

    Top-level entries named in ``link`` are hard-linked instead (``cp -al``): an image shares its instance's /opt
    (the venv, ~200 MB, and the uv cache's links) and an instance of a baked image the image's, the way EBS shares
    a snapshot's blocks until they are written. Installers
    replace files rather than write into them, so the image keeps its content; an in-place edit of a file under
    /opt would show through, a limit of this emulation.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".copying")
    shutil.rmtree(tmp, ignore_errors=True)
    if not link:
        subprocess.run(["cp", "-a", "--sparse=auto", str(source), str(tmp)], check=True, capture_output=True)
    else:
        tmp.mkdir()
        shutil.copystat(source, tmp)
        for entry in source.iterdir():
            mode = "-al" if entry.name in link else "-a"
            subprocess.run(["cp", mode, str(entry), str(tmp / entry.name)], check=True, capture_output=True)
        stat = source.stat()
        os.chown(tmp, stat.st_uid, stat.st_gid)
    tmp.rename(target)


#: The trash's rm gets SIGKILL when the daemon dies (PR_SET_PDEATHSIG of the trash thread, which lives as long as
#: the daemon): nothing of a sandbox outlives its reset, which deletes what is left itself.
_SETPRIV = shutil.which("setpriv")
_DIE_WITH_DAEMON: tuple[str, ...] = (_SETPRIV, "--pdeathsig", "KILL", "--") if _SETPRIV else ()


class Trash:
    """Directories removed at once (a rename into ``directory``) and deleted in the background.

    Deleting a root disk with a Jupyter venv took 3-10 s here (up to 47 s under load: the disk is mounted with
    ``discard``); done in the reconciler it held up every boot, stop and terminate queued behind it, and a `down`
    waited for it. ``directory`` must be on the same file system as what is discarded (all under the sandbox's).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._queue: queue.Queue[Path] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def discard(self, path: Path) -> None:
        self.directory.mkdir(mode=0o700, exist_ok=True)
        target = self.directory / f"{path.name}-{time.monotonic_ns()}"
        try:
            os.replace(path, target)
        except FileNotFoundError:
            return
        except OSError:  # cannot be moved (another file system?): deleted here, as before
            shutil.rmtree(path, ignore_errors=True)
            return
        self._queue.put(target)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._empty_forever, name="trash", daemon=True)
                self._thread.start()

    def _empty_forever(self) -> None:
        """One directory at a time at the lowest CPU priority: booting instances come first on a small machine.
        ``--one-file-system``: never delete through something still mounted below it."""
        while True:
            path = self._queue.get()
            try:
                subprocess.run([*_DIE_WITH_DAEMON, "nice", "-n", "19", "rm", "-rf", "--one-file-system", str(path)],
                               check=False, capture_output=True, timeout=600)
            except FileNotFoundError:  # no nice or rm: slower, in this thread all the same
                shutil.rmtree(path, ignore_errors=True)
            except (OSError, subprocess.SubprocessError):
                log.warning("could not delete %s", path)


class Storage:
    def __init__(self, sandbox_dir: Path, volumes_dir: Path, instance_root: Callable[[str], Path],
                 discard: Callable[[Path], None] | None = None) -> None:
        self.discard = discard or (lambda path: shutil.rmtree(path, ignore_errors=True))
        self.volumes_dir = volumes_dir
        self.snapshots_dir = sandbox_dir / "snapshots"
        self.images_dir = sandbox_dir / "images"
        self.instance_root = instance_root
        for directory in (self.snapshots_dir, self.images_dir):
            shutil.rmtree(directory, ignore_errors=True)  # moto's state died with the previous daemon
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _background(self, label: str, work: Callable[[], None], done: Callable[[bool], None]) -> None:
        def run() -> None:
            ok = True
            try:
                work()
            except Exception:
                log.exception("%s failed", label)
                ok = False
            done(ok)

        threading.Thread(target=run, name=label, daemon=True).start()

    # hooks (moto's threads) --------------------------------------------------------------------------------
    def on_create_snapshot(self, snapshot: Any) -> None:
        volume_id = getattr(getattr(snapshot, "volume", None), "id", None)
        source = self.volumes_dir / str(volume_id)
        target = self.snapshots_dir / snapshot.id
        if not volume_id or not source.is_dir():
            target.mkdir(mode=0o755, exist_ok=True)  # a volume never written to: an empty snapshot
            return
        snapshot.status = "pending"

        def finish(ok: bool) -> None:
            snapshot.status = "completed" if ok else "error"

        self._background(f"snapshot {snapshot.id}", lambda: copy_tree(source, target), finish)

    def on_delete_snapshot(self, snapshot_id: str) -> None:
        self.discard(self.snapshots_dir / snapshot_id)

    def on_create_volume(self, volume: Any, snapshot_id: str | None) -> None:
        if not snapshot_id:
            return
        source = self.snapshots_dir / snapshot_id
        if source.is_dir():  # synchronous: moto reports the volume available at once
            shutil.rmtree(self.volumes_dir / volume.id, ignore_errors=True)
            copy_tree(source, self.volumes_dir / volume.id)

    def on_create_image(self, ami: Any, instance_id: str) -> None:
        source = self.instance_root(instance_id)
        if not source.is_dir():
            return
        ami.state = "pending"

        def finish(ok: bool) -> None:
            ami.state = "available" if ok else "failed"

        # /opt (the venv and the uv cache's hard links) is shared by links both ways, as instances of images do
        def copy() -> None:
            root = self.images_dir / ami.id / "root"
            copy_tree(source, root, link=("opt",))
            # the instance's uv cache links are no part of the image (new instances get their own, ready-made)
            shutil.rmtree(root / INSTANCE_UV_CACHE.lstrip("/"), ignore_errors=True)

        self._background(f"image {ami.id}", copy, finish)

    def on_deregister_image(self, ami_id: str) -> None:
        self.discard(self.images_dir / ami_id)

    def image_root(self, ami_id: str) -> Path | None:
        root = self.images_dir / ami_id / "root"
        return root if root.is_dir() else None
