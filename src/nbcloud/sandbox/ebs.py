"""os mode's EBS volumes: a sparse file per volume, a loop device while it is attached to a running instance, and a
block device node inside the container under the names a Nitro instance shows.

A volume is ``<sandbox>/volumes/<vol-id>/disk.img`` (sparse, the volume's size; snapshots and volumes made from
them copy the directory, see storage.py). While the instance runs, the file is a loop device on the host
(``/dev/loopN``, which the kernel's devtmpfs creates on demand) and, in the container's own /dev (a tmpfs nspawn
made), a node ``/dev/nvmeKn1`` with that device's numbers plus the udev link
``/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol<id>`` (no udev runs in a container: the link is made here).
The node is created through ``/proc/<container pid 1>/root``, which resolves in the container's mount namespace;
this works because nspawn runs unregistered (``--register=no --keep-unit``: no device cgroup policy is set up for
it on this cgroup v1 host) and keeps CAP_MKNOD and CAP_SYS_ADMIN, so root inside may open and mount it.

What differs from Nitro: ``lsblk`` inside reads the host's sysfs, so it names the device ``loopN`` (the node and
the by-id link carry the NVMe names); the device appears at once, without a PCI hot-plug event.

Only loop devices whose backing file lies below our own volumes directory are ever detached: other users of this
machine may use loop devices too.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import threading
import time
from pathlib import Path

__all__ = ["BY_ID", "DISK", "attach_loop", "backing_file", "container_pid1", "detach_loop", "detach_loops_under",
           "loop_of", "present", "withdraw"]

DISK = "disk.img"
BY_ID = "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_"
GIB = 1 << 30
_present_lock = threading.Lock()  # two attaches to one container must not pick the same nvmeK


def backing_file(volume_dir: Path, size_gib: int) -> Path:
    """The volume's file, made sparse at its size on first use; grown (never shrunk) when the volume is bigger
    (a volume made bigger than its snapshot: the file system inside keeps its size until resized, as on EBS)."""
    volume_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = volume_dir / DISK
    with open(path, "ab") as handle:
        if handle.tell() < size_gib * GIB:
            handle.truncate(size_gib * GIB)
    return path


def _loops() -> list[dict[str, str]]:
    done = subprocess.run(["losetup", "--json", "--list", "--output", "NAME,BACK-FILE"], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0 or not done.stdout.strip():
        return []
    return list(json.loads(done.stdout).get("loopdevices", []))


def _backing(row: dict[str, str]) -> str:
    # the kernel keeps the path given at attach time; " (deleted)" once the file is gone
    return (row.get("back-file") or "").removesuffix(" (deleted)")


def loop_of(path: Path) -> str | None:
    """The loop device backed by ``path``, if any."""
    wanted = str(path.resolve())
    return next((row["name"] for row in _loops() if _backing(row) == wanted), None)


def attach_loop(path: Path) -> str:
    """A loop device for ``path`` (the one it already has, else a new one); retried: another user of this machine
    may take the free device between losetup's lookup and its claim."""
    existing = loop_of(path)
    if existing:
        return existing
    error = ""
    for _ in range(5):
        done = subprocess.run(["losetup", "--find", "--show", str(path.resolve())], capture_output=True, text=True,
                              check=False)
        if done.returncode == 0:
            return done.stdout.strip()
        error = done.stderr.strip()
        time.sleep(0.1)
    raise OSError(f"losetup {path}: {error}")


def detach_loop(device: str) -> None:
    """``losetup -d``: a device still mounted somewhere is freed by the kernel when it is unmounted (autoclear)."""
    subprocess.run(["losetup", "--detach", device], capture_output=True, check=False)


def detach_loops_under(directory: Path) -> list[str]:
    """Detach every loop device backed by a file below ``directory`` (a dead daemon's, or at exit and reset)."""
    prefix = str(directory.resolve()) + "/"
    devices = [row["name"] for row in _loops() if _backing(row).startswith(prefix)]
    for device in devices:
        detach_loop(device)
    return devices


def container_pid1(nspawn_pid: int, timeout: float = 60.0) -> int | None:
    """The container's PID 1 (nspawn's child, pid 1 in its own PID namespace) once it runs systemd: by then nspawn
    has made the container's /dev, where the nodes go."""
    deadline = time.monotonic() + timeout
    while True:  # at least one look (timeout 0: the running container's, now)
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{nspawn_pid}/task/{nspawn_pid}/children").read_text().split()
            for child in children:
                status = Path(f"/proc/{child}/status").read_text()
                nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
                if nspid[-1:] == ["1"] and Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return int(child)
        if not Path(f"/proc/{nspawn_pid}").exists() or time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def _link(volume_id: str) -> str:
    return BY_ID + volume_id.replace("-", "", 1)


def present(pid1: int, device: str, volume_id: str) -> str:
    """Make ``device`` a block device of the container: ``/dev/nvmeKn1`` (the lowest K free; nvme0 is the root
    disk on Nitro) and its by-id link. Returns the node's name inside; idempotent."""
    root = Path(f"/proc/{pid1}/root")
    rdev = os.stat(device).st_rdev
    link = root / _link(volume_id).lstrip("/")
    with _present_lock:
        with contextlib.suppress(OSError):
            current = os.path.basename(os.readlink(link))  # ../../nvmeKn1
            if os.stat(root / "dev" / current).st_rdev == rdev:
                return "/dev/" + current
        index = 1
        while (root / f"dev/nvme{index}n1").exists() or (root / f"dev/nvme{index}n1").is_symlink():
            index += 1
        name = f"nvme{index}n1"
        os.mknod(root / "dev" / name, 0o660 | stat.S_IFBLK, rdev)
        with contextlib.suppress(KeyError):
            import grp

            os.chown(root / "dev" / name, 0, grp.getgrnam("disk").gr_gid)  # the host's "disk"; Debian's is 6 too
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(f"../../{name}")
    return "/dev/" + name


def _mounts_of(pid1: int, rdev: int) -> list[str]:
    """Mount points inside the container whose file system lives on ``rdev`` (mountinfo's major:minor)."""
    wanted = f"{os.major(rdev)}:{os.minor(rdev)}"
    points = []
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid1}/mountinfo").read_text().splitlines():
            fields = line.split()
            if len(fields) > 4 and fields[2] == wanted:
                points.append(fields[4].encode().decode("unicode_escape"))
    return points


def withdraw(pid1: int, device: str, volume_id: str) -> list[str]:
    """Take the device away from a running container, as a forced detach does: its file systems are unmounted
    (lazily: open files keep it busy until closed, then the loop device is freed) and the node and link go.
    Returns the mount points that were still mounted (a user should unmount before detaching, as on EC2)."""
    root = Path(f"/proc/{pid1}/root")
    rdev = os.stat(device).st_rdev
    points = _mounts_of(pid1, rdev)
    for point in sorted(points, key=len, reverse=True):
        # its PID namespace too: umount reads /proc/self/mountinfo, and the container's /proc shows only its own
        subprocess.run(["nsenter", f"--target={pid1}", "--mount", "--pid", "umount", "-l", point],
                       capture_output=True, check=False)
    link = root / _link(volume_id).lstrip("/")
    with _present_lock, contextlib.suppress(OSError):
        node = root / "dev" / os.path.basename(os.readlink(link))
        if node.exists() and os.stat(node).st_rdev == rdev:
            node.unlink()
        link.unlink()
    return points
