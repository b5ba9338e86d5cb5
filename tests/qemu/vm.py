"""One QEMU virtual machine (software emulation) booting the os-mode root filesystem's kernel variant, as EC2 would.

Root and volumes are NVMe disks whose serial is a volume id, SMBIOS says "Amazon EC2" with an ``ec2…`` UUID (so
cloud-init picks its Ec2 datasource and IMDSv2), the sandbox's IMDS answers at 169.254.169.254 through a guestfwd to
a loopback port, and SSH is a hostfwd on 127.0.0.1. User networking with ``restrict=on``: the guest reaches nothing
but those two forwards. Everything lives in one temp dir that ``close()`` removes; qemu gets SIGKILL when the test
process dies (PR_SET_PDEATHSIG through setpriv), so even a killed pytest leaves no VM behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["APT_HINT", "QemuVM", "missing_tools", "remove_stale_dirs"]

TOOLS = {"qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils", "socat": "socat", "mke2fs": "e2fsprogs",
         "setpriv": "util-linux", "ssh": "openssh-client"}
APT_HINT = "apt-get install -y qemu-system-x86 qemu-utils socat"
PREFIX = "nbcloud-qemu-"
# DESIGN.md section 7: this machine's /dev/kvm (kvm_pvm) cannot boot a Debian kernel; TCG can. Not `-cpu max`: with
# its 5-level paging (la57) the 6.1 kernel booted but fsync gave EINVAL and every unit with a mount namespace
# failed (udevd, networkd, logind: no by-id links, no network); the baseline model boots cleanly, and sooner.
ACCEL = ["-accel", "tcg,tb-size=128", "-cpu", "qemu64", "-m", "1024", "-smp", "1"]


def missing_tools() -> list[str]:
    return [cmd for cmd in TOOLS if shutil.which(cmd) is None]


def remove_stale_dirs() -> None:
    """Temp dirs of earlier runs whose process is gone (a SIGKILLed pytest cannot remove its own)."""
    for path in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        pid = path.name.removeprefix(PREFIX).split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, ignore_errors=True)


def volume_serial(volume_id: str) -> str:
    """The NVMe serial EC2 gives an EBS volume: its id without the dash (20 characters, NVMe's limit)."""
    return volume_id.replace("-", "")


class Qmp:
    """A minimal QMP client: one command at a time; events are kept for ``wait_event``."""

    def __init__(self, path: Path, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.file = self.sock.makefile("rw")
        self.events: list[dict[str, Any]] = []
        json.loads(self.file.readline())  # the greeting
        self.command("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        line = self.file.readline()
        if not line:
            raise ConnectionError("QMP closed")
        return json.loads(line)

    def command(self, name: str, **arguments: Any) -> Any:
        self.file.write(json.dumps({"execute": name, "arguments": arguments}) + "\n")
        self.file.flush()
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                raise RuntimeError(f"QMP {name}: {reply['error']}")
            else:
                return reply.get("return")

    def wait_event(self, name: str, timeout: float) -> dict[str, Any]:
        self.sock.settimeout(timeout)
        try:
            while True:
                for event in self.events:
                    if event["event"] == name:
                        self.events.remove(event)
                        return event
                self.events.append(self._read())
        finally:
            self.sock.settimeout(None)

    def close(self) -> None:
        self.sock.close()


class QemuVM:
    """``QemuVM(image_root, ssh_port, imds_port)``; ``boot(root_serial, volumes)`` starts it; ``close()`` ends it."""

    def __init__(self, image_root: Path, ssh_port: int, imds_port: int) -> None:
        self.image_root = image_root
        self.ssh_port, self.imds_port = ssh_port, imds_port
        self.dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: Qmp | None = None
        self.uuid = "ec2" + str(uuid.uuid4())[3:]  # cloud-init's test for AWS: the UUID starts with "ec2"

    def make_root_disk(self, size: str = "3G") -> Path:
        """An ext4 disk filled from a copy of the image (mke2fs -d reads it; the shared image is never written)."""
        disk = self.dir / "root.img"
        subprocess.run(["mke2fs", "-q", "-t", "ext4", "-L", "nbroot", "-d", str(self.image_root), "-F", str(disk),
                        size], check=True, capture_output=True)
        boot = self.image_root / "boot"
        shutil.copy(max(boot.glob("vmlinuz-*")), self.dir / "vmlinuz")
        shutil.copy(max(boot.glob("initrd.img-*")), self.dir / "initrd.img")
        return disk

    def blank_volume(self, name: str, size: str = "256M") -> Path:
        path = self.dir / f"{name}.img"
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(path), size], check=True)
        return path

    def _command(self, root: Path, root_serial: str, volumes: dict[str, Path]) -> list[str]:
        forward = f"guestfwd=tcp:169.254.169.254:80-cmd:socat STDIO TCP:127.0.0.1:{self.imds_port}"
        net = ("user,id=n0,restrict=on,net=169.254.169.0/24,"
               f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22,{forward}")
        cmd = ["setpriv", "--pdeathsig", "KILL", "--", "qemu-system-x86_64", "-name", "nbcloud-qemu-smoke",
               "-nodefaults", "-no-user-config", "-display", "none", *ACCEL,
               "-smbios", f"type=1,manufacturer=Amazon EC2,product=t3.micro,serial={self.uuid},uuid={self.uuid}",
               "-kernel", str(self.dir / "vmlinuz"), "-initrd", str(self.dir / "initrd.img"),
               "-append", "root=LABEL=nbroot rw console=ttyS0 net.ifnames=0",
               "-serial", f"file:{self.dir / 'console.log'}",
               "-qmp", f"unix:{self.dir / 'qmp.sock'},server=on,wait=off",
               "-netdev", net, "-device", "virtio-net-pci,netdev=n0",
               "-blockdev", f"driver=raw,node-name=root,file.driver=file,file.filename={root}",
               "-device", f"nvme,id=nvme-root,drive=root,serial={root_serial}"]
        for serial, path in volumes.items():
            cmd += ["-blockdev", f"driver=raw,node-name={serial},file.driver=file,file.filename={path}",
                    "-device", f"nvme,id=nvme-{serial},drive={serial},serial={serial}"]
        return cmd

    def boot(self, root_serial: str, volumes: dict[str, Path]) -> None:
        cmd = self._command(self.dir / "root.img", root_serial, volumes)
        with open(self.dir / "qemu.log", "wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.qmp = Qmp(self.dir / "qmp.sock")

    def hot_attach(self, serial: str, path: Path) -> None:
        """EC2's AttachVolume as Nitro shows it: a new NVMe controller appears on the PCI bus."""
        assert self.qmp is not None
        self.qmp.command("blockdev-add", **{"node-name": serial, "driver": "raw",
                                             "file": {"driver": "file", "filename": str(path)}})
        self.qmp.command("device_add", driver="nvme", id=f"nvme-{serial}", drive=serial, serial=serial)

    def hot_detach(self, serial: str, timeout: float = 120) -> None:
        """DetachVolume: the guest acknowledges the unplug (ACPI), then the backend goes."""
        assert self.qmp is not None
        self.qmp.command("device_del", id=f"nvme-{serial}")
        self.qmp.wait_event("DEVICE_DELETED", timeout)
        self.qmp.command("blockdev-del", **{"node-name": serial})

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def console_tail(self, lines: int = 25) -> str:
        try:
            text = (self.dir / "console.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        """Stop qemu (QMP quit, then SIGKILL) and remove the disks, sockets and logs."""
        try:
            if self.qmp is not None:
                with contextlib.suppress(OSError, RuntimeError, ValueError):
                    self.qmp.command("quit")
                self.qmp.close()
            if self.proc is not None:
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.send_signal(signal.SIGKILL)
                    self.proc.wait()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
