"""The root filesystem that ``os``-mode sandbox instances boot (systemd-nspawn): built once per machine.

Debian bookworm, built with mmdebstrap from the Debian mirror this machine's apt already uses, cached beside the
wheelhouse (``~/.cache/nbcloud/rootfs/<key>``, the key a hash of the package list and the configuration below).
The customize hook makes it a clean image: no SSH host keys (cloud-init writes the ones user-data gives), an empty
``/etc/machine-id`` (systemd makes one per instance at first boot), and cloud-init set up as on an Ubuntu EC2
image: the Ec2 datasource, login user ``ubuntu`` with passwordless sudo.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import SandboxError
from .wheelhouse import wheelhouse_root

__all__ = ["KERNEL_PACKAGES", "PACKAGES", "TOOLS", "build_image", "find_mirror", "image_info", "image_path",
           "missing_tools"]

SUITE = "bookworm"
# what an Ubuntu cloud image has that matters to nbcloud (issue 16); minbase has neither an init nor sshd
PACKAGES = ("systemd-sysv", "openssh-server", "cloud-init", "sudo", "python3", "python3-venv", "iproute2", "curl",
            "locales", "dbus", "ca-certificates", "e2fsprogs", "nftables", "procps", "util-linux", "rsync")
# the variant that boots as a virtual machine (the QEMU smoke test): a kernel, an initramfs that finds an NVMe
# root, and udev (a container has none; a VM needs it for /dev/disk/by-id). Recommends are off, so each is named.
KERNEL_PACKAGES = ("linux-image-cloud-amd64", "initramfs-tools", "udev", "kmod")
TOOLS = {"mmdebstrap": "mmdebstrap", "systemd-nspawn": "systemd-container"}  # command -> Debian package

# cloud-init inside a container: it cannot tell EC2 from DMI (there is none), so the datasource is named; the
# network is the sandbox's (configured from outside, in the instance's namespace), never rewritten inside
CLOUD_CFG = """\
# written by nbcloud's sandbox image build: cloud-init as on an Ubuntu EC2 image
datasource_list: [ Ec2, None ]
datasource:
  Ec2:
    strict_id: false
    timeout: 2
    max_wait: 20
network: {config: disabled}
manage_etc_hosts: true
locale: false
preserve_hostname: false
# the host keys an instance makes at first boot: RSA takes 0.8-1.6 s here (DSA is obsolete), ed25519 0.01 s, and on
# the way to SSH (cloud-init runs before sshd). An image's choice; nbcloud's own user-data brings its host keys
ssh_genkeytypes: [ed25519, ecdsa]
system_info:
  default_user:
    name: ubuntu
    gecos: Ubuntu
    groups: [adm, sudo, systemd-journal]
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
    lock_passwd: true
"""

# cloud-init tells AWS from a look-alike by the system UUID: on Xen, /sys/hypervisor/uuid starting "ec2" (then it
# takes EC2's IMDSv2 token path, as the sandbox's IMDS requires). A container has no DMI (cloud-init ignores it in a
# container anyway) and sysfs has no /sys/hypervisor to bind over, so the image reads that UUID from a file the
# sandbox writes into each instance's layer: the one line of cloud-init the image changes.
HYPERVISOR_UUID = "/etc/nbcloud-sandbox/hypervisor-uuid"
_EC2_DS = "/usr/lib/python3/dist-packages/cloudinit/sources/DataSourceEc2.py"
_ENTRY = "cloudinit.cmd.main:main"  # the package's console_scripts entry for cloud-init
CLOUD_INIT_SCRIPT = f"""\
#!/usr/bin/python3
# nbcloud's sandbox image: the cloud-init package's entry point ({_ENTRY}), called without setuptools' metadata scan
import sys

from cloudinit.cmd.main import main

if __name__ == "__main__":
    sys.exit(main())
"""

# units that only make sense on hardware or that would wait for a network nbcloud configures from outside
MASKED = ("systemd-networkd-wait-online.service", "getty@tty1.service", "console-getty.service",
          "e2scrub_reap.service", "apt-daily.timer", "apt-daily-upgrade.timer")


# What a VM needs beyond the container image, none of which a container sees. On Nitro, udev names an EBS volume
# /dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol… from the controller's model string; QEMU 7.2 cannot set that
# model (it reports "QEMU NVMe Ctrl"), so this rule adds the AWS name for a QEMU NVMe disk whose serial is a volume
# id, as Amazon Linux's ebsnvme-id rules add names from the device's own data. The network comes from QEMU's DHCP
# (cloud-init's network config is off in this image: the sandbox sets addresses from outside).
EBS_UDEV_RULE = (
    'KERNEL=="nvme*[0-9]n*[0-9]", ENV{DEVTYPE}=="disk", ENV{ID_MODEL}=="QEMU NVMe Ctrl", '
    'ENV{ID_SERIAL_SHORT}=="vol*", SYMLINK+="disk/by-id/nvme-Amazon_Elastic_Block_Store_$env{ID_SERIAL_SHORT}"\n'
    'KERNEL=="nvme*[0-9]n*[0-9]p*[0-9]", ENV{DEVTYPE}=="partition", ENV{ID_MODEL}=="QEMU NVMe Ctrl", '
    'ENV{ID_SERIAL_SHORT}=="vol*", '
    'SYMLINK+="disk/by-id/nvme-Amazon_Elastic_Block_Store_$env{ID_SERIAL_SHORT}-part%n"\n')
VM_NETWORK = "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n"


def _key(kernel: bool = False) -> str:
    text = "\n".join([SUITE, *PACKAGES, CLOUD_CFG, *MASKED, HYPERVISOR_UUID, CLOUD_INIT_SCRIPT, "dhcp-timeout-3", "v4"])
    if kernel:
        text += "\n".join(["", *KERNEL_PACKAGES, EBS_UDEV_RULE, VM_NETWORK])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def image_path(kernel: bool = False) -> Path:
    """Where the root filesystem lives: beside the wheelhouse, one directory per configuration (``-kernel``: the
    variant that boots as a VM); ``$NBCLOUD_OS_IMAGE`` names another (to build or boot an image beside the
    machine's, e.g. to compare two in one bench run)."""
    suffix = "-kernel" if kernel else ""
    override = os.environ.get("NBCLOUD_OS_IMAGE")
    if override:
        return Path(override + suffix)
    return wheelhouse_root().parent / "rootfs" / f"{SUITE}-{_key(kernel)}{suffix}"


def image_info(kernel: bool = False) -> dict[str, Any] | None:
    """``{"path", "built_at", "build_seconds", "size_bytes", "suite", "mirror"}`` of a complete image, else None."""
    stamp = image_path(kernel) / ".nbcloud-image.json"
    try:
        info: dict[str, Any] = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
    return {"path": str(image_path(kernel) / "root"), **info}


def missing_tools() -> list[str]:
    return [cmd for cmd in TOOLS if shutil.which(cmd) is None]


def find_mirror(sources: list[Path] | None = None) -> str:
    """The Debian mirror this machine's apt uses (deb822 ``.sources`` or one-line ``.list``)."""
    files = sources if sources is not None else [
        Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.sources")),
        *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
                suites = fields.get("Suites", "").split()
                if SUITE in suites and "deb" in fields.get("Types", "").split():
                    return fields.get("URIs", "").split()[0]
        else:
            for line in text.splitlines():
                words = [w for w in line.split() if not w.startswith("[")]
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    return words[1]
    return "http://deb.debian.org/debian"


def _install_tools(say: Callable[[str], None]) -> None:
    missing = missing_tools()
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SandboxError(f"building the instance image needs {', '.join(missing)}",
                           f"apt-get install -y {' '.join(TOOLS[c] for c in missing)}")
    packages = sorted({TOOLS[c] for c in missing})
    say(f"installing {' '.join(packages)} (apt)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]):
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:]
            raise SandboxError(f"{' '.join(cmd[:2])} failed: {' '.join(tail)}",
                               f"install them yourself: apt-get install -y {' '.join(packages)}")


def _vm_hook(partial: Path) -> str:
    """The kernel variant's extra customize lines: the EBS name rule and DHCP on the VM's network interface."""
    rule, network = partial / "70-nbcloud-ebs-name.rules", partial / "20-nbcloud-dhcp.network"
    rule.write_text(EBS_UDEV_RULE)
    network.write_text(VM_NETWORK)
    return (f'install -D -m 0644 {rule} "$r/etc/udev/rules.d/70-nbcloud-ebs-name.rules"\n'
            f'install -D -m 0644 {network} "$r/etc/systemd/network/20-nbcloud-dhcp.network"\n'
            'chroot "$r" systemctl enable systemd-networkd.service\n'
            'ls "$r"/boot/vmlinuz-* "$r"/boot/initrd.img-* >/dev/null\n')  # fail the build without a kernel


def _hook_script(cfg: Path, script: Path, extra: str = "") -> str:
    """mmdebstrap's customize hook (``$1`` is the new root): what makes the tree a clean, reusable image."""
    masks = " ".join(MASKED)
    return (
        'set -e; r="$1"\n'
        'rm -f "$r"/etc/ssh/ssh_host_*\n'
        ': > "$r/etc/machine-id"; rm -f "$r/var/lib/dbus/machine-id"\n'
        f'install -m 0644 {cfg} "$r/etc/cloud/cloud.cfg.d/90-nbcloud-sandbox.cfg"\n'
        f'for u in {masks}; do ln -sf /dev/null "$r/etc/systemd/system/$u"; done\n'
        'rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin\n'
        'rm -rf "$r/var/lib/cloud"\n'
        # cloud-init's Ec2Local asks DHCP first (EC2's VPC answers at once); the sandbox has no DHCP server (the
        # address is set from outside), so the ask gives up after 3 s instead of dhclient's 60
        'printf "timeout 3;\\n" >> "$r/etc/dhcp/dhclient.conf"\n'
        f'grep -q \'"/sys/hypervisor/uuid"\' "$r{_EC2_DS}"\n'  # fail the build if cloud-init changed
        f'sed -i \'s|"/sys/hypervisor/uuid"|"{HYPERVISOR_UUID}"|\' "$r{_EC2_DS}"\n'
        f'rm -rf "$r"/usr/lib/python3/dist-packages/cloudinit/sources/__pycache__\n'
        # byte-compiled again in the image (as the package's postinst did): else every instance's first cloud-init
        # compiles these modules on its way to SSH and writes them into its own layer
        'chroot "$r" python3 -m compileall -q /usr/lib/python3/dist-packages/cloudinit/sources\n'
        # /usr/bin/cloud-init is setuptools' wrapper: at every run (two before sshd) it scans the installed packages'
        # metadata for the entry point, 0.07-0.3 s here, to import the same function; the image calls it directly
        f'grep -qx "cloud-init = {_ENTRY}" "$r"/usr/lib/python3/dist-packages/cloud_init-*/entry_points.txt\n'
        f'install -m 0755 {script} "$r/usr/bin/cloud-init"\n'
        + extra
    )


def build_image(progress: Callable[[str], None] | None = None, force: bool = False,
                kernel: bool = False) -> dict[str, Any]:
    """Build the root filesystem unless a complete one exists (a few minutes, ~500-800 MB); returns its info.
    ``kernel``: the variant that boots as a VM (a kernel, initramfs and udev more; its own directory)."""
    say = progress or (lambda _msg: None)
    if os.geteuid() != 0:
        raise SandboxError("building the instance image needs root (mmdebstrap as root, device nodes)",
                           "run `sudo nbcloud sandbox image build`")
    existing = image_info(kernel)
    if existing and not force:
        return existing
    _install_tools(say)
    target = image_path(kernel)
    packages = PACKAGES + (KERNEL_PACKAGES if kernel else ())
    mirror = find_mirror()
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    cfg = partial / "90-nbcloud-sandbox.cfg"
    cfg.write_text(CLOUD_CFG)
    hook = partial / "customize.sh"
    script = partial / "cloud-init"
    script.write_text(CLOUD_INIT_SCRIPT)
    extra = _vm_hook(partial) if kernel else ""
    hook.write_text(_hook_script(cfg, script, extra))
    log_path = target.parent / ("mmdebstrap-kernel.log" if kernel else "mmdebstrap.log")
    say(f"building the instance image: Debian {SUITE} from {mirror} into {target} "
        f"(once per machine, a few minutes; log: {log_path})")
    cmd = ["mmdebstrap", "--mode=root", "--variant=minbase", f"--include={','.join(packages)}",
           "--aptopt=APT::Install-Recommends \"false\"", "--dpkgopt=path-exclude=/usr/share/doc/*",
           "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
           f"--customize-hook=sh {hook} \"$1\"", SUITE, str(partial / "root"), mirror]
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        assert proc.stdout is not None
        for line in proc.stdout:  # mmdebstrap's own phases ("I: downloading packages...") are the progress
            log.write(line)
            if line.startswith("I: "):
                say(f"image: {line[3:].strip()} ({time.monotonic() - started:.0f} s)")
        code = proc.wait()
    if code != 0:
        shutil.rmtree(partial, ignore_errors=True)
        tail = log_path.read_text(errors="replace").strip().splitlines()[-2:]
        raise SandboxError(f"mmdebstrap failed (exit {code}): {' | '.join(tail)}", f"see {log_path}")
    seconds = time.monotonic() - started
    size = int(subprocess.run(["du", "-sb", str(partial / "root")], capture_output=True, text=True,
                              check=True).stdout.split()[0])
    for leftover in (cfg, script, hook, *partial.glob("20-nbcloud-*"), *partial.glob("70-nbcloud-*")):
        leftover.unlink()
    info = {"built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "build_seconds": round(seconds, 1),
            "size_bytes": size, "suite": SUITE, "mirror": mirror, "packages": list(packages)}
    (partial / ".nbcloud-image.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    say(f"image ready: {size / 1e6:.0f} MB in {seconds:.0f} s")
    return {"path": str(target / "root"), **info}
