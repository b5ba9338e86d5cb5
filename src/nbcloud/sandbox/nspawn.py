"""``os`` mode: an instance is a container booting the real OS of the sandbox image (systemd-nspawn).

Its disk is an overlayfs layer over the machine's image (``<instance>/layer/upper``; stop keeps it, terminate
deletes it), mounted at ``<instance>/root`` while it runs. ``systemd-nspawn -b`` boots it in the instance's existing
network namespace (so addresses, security groups and link faults are those of netns mode) with its own PID
namespace and its own /etc: systemd is PID 1, cloud-init reads user-data and the key from the sandbox IMDS (a small
process in the same network namespace, outside the container), OpenSSH and nbcloud's units are real.

Power: the daemon's stop is nspawn's SIGTERM (systemd inside halts cleanly, units stopped in order); a poweroff
inside ends nspawn with 0 (the daemon reports it to the API as an instance-initiated stop); a reboot inside ends it
with 133 (nspawn's convention) and the daemon boots the same layer again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

__all__ = ["REBOOT_EXIT", "ContainerSpec", "layer_root", "mount_layer", "spawn_container", "spawn_imds",
           "stop_container", "unmount_layer", "unmount_layers", "write_platform"]

REBOOT_EXIT = 133  # systemd-nspawn's exit status when the container asked for a reboot
INSIDE = "/mnt/nbcloud-sandbox"  # the sandbox's shared files inside an instance (as in netns mode)
SRC_DIR = str(Path(__file__).resolve().parents[2])  # the directory holding the nbcloud package


def layer_root(instance_dir: Path) -> Path:
    """The instance's copy-on-write layer (what survives stop/start); ``<instance>/root`` is its mount point."""
    return instance_dir / "layer" / "upper"


def mount_layer(instance_dir: Path, image_root: Path) -> Path:
    """Mount the overlay (image below, the instance's layer above) at ``<instance>/root``; idempotent."""
    upper, work, root = layer_root(instance_dir), instance_dir / "layer" / "work", instance_dir / "root"
    for path in (upper, work, root):
        path.mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(root):
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={image_root},upperdir={upper},workdir={work}", str(root)],
                       check=True, capture_output=True, text=True)
    return root


def write_platform(layer: Path) -> None:
    """What EC2's hypervisor shows the instance, in its new layer: a system UUID starting ``ec2`` (see
    osimage.HYPERVISOR_UUID: cloud-init then knows it is on AWS and takes the IMDSv2 path)."""
    from .osimage import HYPERVISOR_UUID

    path = layer / HYPERVISOR_UUID.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("ec2" + str(uuid.uuid4())[3:] + "\n")
    # the sandbox's VPC has no DNS server: lookups fail at once (nothing listens there) instead of timing out
    resolv = layer / "etc/resolv.conf"
    resolv.write_text("# no DNS in the sandbox\nnameserver 127.0.0.53\noptions timeout:1 attempts:1\n")


def unmount_layer(instance_dir: Path) -> None:
    root = instance_dir / "root"
    if os.path.ismount(root):
        # lazy: a process that outlived the container (being killed) must not keep the layer mounted
        subprocess.run(["umount", "-l", str(root)], check=False, capture_output=True)


def unmount_layers(instances_dir: Path) -> list[str]:
    """Unmount every instance layer below ``instances_dir`` (a dead daemon's): before anything deletes them."""
    prefix = str(instances_dir.resolve()) + "/"
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    done = []
    for line in mounts:
        target = line.split()[1] if len(line.split()) > 1 else ""
        if target.startswith(prefix) and target.endswith("/root"):
            subprocess.run(["umount", "-l", target], check=False, capture_output=True)
            done.append(target)
    return done


class ContainerSpec:
    """What one boot of an instance needs: its names, its layer, what the sandbox lends it."""

    def __init__(self, instance_id: str, instance_dir: Path, netns: str, shared_dir: Path, wheelhouse: str) -> None:
        self.instance_id = instance_id
        self.instance_dir = instance_dir
        self.netns = netns
        self.shared_dir = shared_dir
        self.wheelhouse = wheelhouse

    def argv(self) -> list[str]:
        binds = [f"--bind-ro={self.shared_dir / 'bin'}:{INSIDE}/bin"]
        if self.wheelhouse and Path(self.wheelhouse).is_dir():
            binds.append(f"--bind-ro={self.wheelhouse}:{INSIDE}/wheelhouse")
        # data volumes are block devices, made inside once the container runs (see ebs.py)
        # nspawn starts inside the namespace, in a mount namespace of its own whose /sys is a sysfs mounted there
        # (so it lists the instance's links, not the host's: --network-namespace-path would show the host's), with
        # the host's cgroup tree put back below it (which nspawn needs; `ip netns exec` would hide it)
        stash = self.instance_dir / "cgroup"
        remount_sys = (f'mkdir -p {stash} && mount --rbind /sys/fs/cgroup {stash} && umount -l /sys && '
                       f'mount -t sysfs sysfs /sys && mount --rbind {stash} /sys/fs/cgroup && umount -l {stash} && '
                       'exec "$@"')
        return [
            "nsenter", f"--net=/run/netns/{self.netns}", "unshare", "--mount", "--propagation", "slave",
            "sh", "-c", remount_sys, "sh",
            "systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit",
            f"--directory={self.instance_dir / 'root'}", f"--machine={self.instance_id}",
            "--resolv-conf=off", "--timezone=off", "--link-journal=no", "--console=pipe",
            # root on an instance may firewall its own network (bootstrap.sh's IMDS guard uses nft), as on EC2.
            # The namespace is the instance's alone; but the sandbox's security-group table lives there too, so
            # root inside could edit it (on EC2 it is outside the instance): a known gap of this mode
            "--capability=CAP_NET_ADMIN",
            *binds,
        ]


def spawn_imds(instance_dir: Path, netns: str) -> subprocess.Popen[bytes]:
    """The instance's IMDS: a process in its network namespace (not in the container: the instance cannot see or
    signal it), answering on 169.254.169.254:80 from ``boot.json`` and the stored user-data and key."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": SRC_DIR, "LANG": "C.UTF-8"}
    with open(instance_dir / "imds.log", "ab") as out:
        return subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "nbcloud.sandbox.imds", str(instance_dir)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, start_new_session=True)


def spawn_container(spec: ContainerSpec) -> subprocess.Popen[bytes]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    with open(spec.instance_dir / "console.log", "ab") as out:
        return subprocess.Popen(spec.argv(), stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                start_new_session=True)


def stop_container(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int | None:
    """A clean shutdown: nspawn passes SIGTERM on to systemd inside as a halt request; SIGKILL after ``timeout``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode
