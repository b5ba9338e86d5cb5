"""Real-kernel smoke test: one QEMU VM (software emulation) booting the os-mode root filesystem as an EC2 instance.

What only a real kernel shows: cloud-init picks Ec2 from SMBIOS and reads user-data (nbcloud's real gzip'd MIME
multipart) and the key from the sandbox's IMDS; root and volumes are NVMe disks; nbcloud's real bootstrap formats
and mounts the data volume from ``/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol…``; a volume detached and
another hot-attached through QMP (``device_del`` / ``blockdev-add`` + ``device_add nvme``) come and go in the
guest; the bootstrap's unit remounts the volume after ``systemctl reboot`` and a file written before is there.

Minutes long (QEMU emulates the CPU here): opt-in with NBCLOUD_QEMU_TESTS=1 (``scripts/qemu-smoke``). Figures are
printed, never asserted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.qemu.guest import Guest
from tests.qemu.vm import APT_HINT, QemuVM, missing_tools, remove_stale_dirs, volume_serial

from nbcloud.remote.bootstrap import RERUN_FROM_STDIN, render_bootstrap
from nbcloud.remote.spec import BootstrapSpec
from nbcloud.remote.units import render_units
from nbcloud.remote.userdata import render_user_data
from nbcloud.sandbox.imds import MetadataSource, serve_imds

SKIP = "QEMU smoke test (minutes): set NBCLOUD_QEMU_TESTS=1 or run scripts/qemu-smoke"
pytestmark = [pytest.mark.skipif(os.environ.get("NBCLOUD_QEMU_TESTS") != "1", reason=SKIP),
              pytest.mark.timeout(2400)]  # two emulated boots, and on a first run the image build

EBS = "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_"
BOOT_TIMEOUT = 900  # 60-95 s measured alone; a loaded 2-core machine is several times slower
FIGURES: dict[str, float] = {}


def _say(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"[qemu-smoke] {text}", file=sys.stderr, flush=True)


def _free_port(port: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            pytest.fail(f"127.0.0.1:{port} is taken (NBCLOUD_TEST_PORT_BASE + 2990/2991): set another port base")
    return port


@pytest.fixture(scope="module")
def image_root() -> Path:
    missing = missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: {APT_HINT}")
    if os.geteuid() != 0:
        pytest.skip("needs root (the image build and copying its root-owned files into the VM disk)")
    from nbcloud.sandbox.osimage import build_image

    # the kernel variant of the os-mode image: built once per machine (a few minutes), beside the shared one
    info = build_image(lambda msg: print(f"[qemu-smoke] {msg}", file=sys.__stderr__, flush=True), kernel=True)
    return Path(info["path"])


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for name in ("client", "host"):
        paths[name] = tmp_path / f"{name}_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(paths[name])],
                       check=True)
    return paths


@pytest.fixture
def ports() -> tuple[int, int]:
    base = int(os.environ.get("NBCLOUD_TEST_PORT_BASE", "20000")) + 2990
    return _free_port(base), _free_port(base + 1)


@pytest.fixture
def vm(image_root: Path, ports: tuple[int, int]) -> Iterator[QemuVM]:
    remove_stale_dirs()
    machine = QemuVM(image_root, *ports)
    try:
        yield machine
    finally:  # also on failure and Ctrl-C: qemu, disks, QMP socket and logs go
        machine.close()


def _imds_dir(path: Path, user_data: bytes, public_key: str) -> Path:
    path.mkdir()
    (path / "user-data").write_bytes(user_data)
    (path / "public-key").write_text(public_key)
    (path / "boot.json").write_text(json.dumps({
        "instance_id": "i-0" + secrets.token_hex(8), "instance_type": "t3.micro", "ami_id": "ami-0" + "0" * 16,
        "address": "169.254.169.15", "hostname": "ip-169-254-169-15.ec2.internal",
        "availability_zone": "us-east-1a", "region": "us-east-1"}))
    return path


def _volume_id() -> str:
    return "vol-0" + secrets.token_hex(8)


def _first_boot(vm: QemuVM, guest: Guest, capsys: pytest.CaptureFixture[str], vol_a: str,
                user_data: bytes) -> None:
    """Boot with root and volume A on NVMe; cloud-init runs the user-data's bootstrap, which formats and mounts A."""
    vm.make_root_disk()
    started = time.monotonic()
    vm.boot(volume_serial(_volume_id()), {volume_serial(vol_a): vm.blank_volume("a")})
    guest.wait_ssh(vm.alive, BOOT_TIMEOUT)
    FIGURES["boot_to_ssh_s"] = time.monotonic() - started
    _say(capsys, f"SSH after {FIGURES['boot_to_ssh_s']:.0f} s")
    status = guest.run("cloud-init status --wait --long", timeout=BOOT_TIMEOUT, check=False).stdout
    FIGURES["boot_to_cloud_init_done_s"] = time.monotonic() - started
    assert "status: done" in status, status
    assert guest.out("cloud-id") == "aws"  # Ec2 datasource, chosen from SMBIOS (not forced by strict_id)
    # the bytes cloud-init fetched are the bytes given: gzip'd MIME multipart through IMDS, guestfwd and socat
    fetched = guest.out("sudo sha256sum /var/lib/cloud/instance/user-data.txt").split()[0]
    assert fetched == hashlib.sha256(user_data).hexdigest()
    log = guest.out("sudo cat /var/log/nbcloud/bootstrap.log")
    assert f"data: {vol_a} mounted" in log and "data: formatting new volume" in log, log
    link = guest.out(f"readlink -f {EBS}{volume_serial(vol_a)}")
    assert guest.out("findmnt -no SOURCE /home/ubuntu/data") == link


def _swap_volumes(vm: QemuVM, guest: Guest, vol_a: str, vol_b: str) -> None:
    """Detach A (unmount, device_del), hot-attach B (blockdev-add + device_add) and time B's link in the guest."""
    guest.run("sudo umount /home/ubuntu/data")
    vm.hot_detach(volume_serial(vol_a))
    guest.run(f"for i in $(seq 300); do [ -e {EBS}{volume_serial(vol_a)} ] || exit 0; sleep 0.2; done; exit 1")
    link = EBS + volume_serial(vol_b)
    waiter = guest.start(f"echo waiting; while [ ! -b {link} ]; do sleep 0.1; done; echo seen")
    assert waiter.stdout is not None and waiter.stdout.readline().strip() == "waiting"
    started = time.monotonic()
    vm.hot_attach(volume_serial(vol_b), vm.blank_volume("b"))
    out, err = waiter.communicate(timeout=300)
    FIGURES["hot_attach_to_visible_s"] = time.monotonic() - started
    assert out.strip() == "seen", err


def _bootstrap_volume(guest: Guest, spec: BootstrapSpec, token: str) -> None:
    """nbcloud's real bootstrap (its data step) for B, as a re-run sends it, then the unit that remounts at boot."""
    guest.run("root=\n" + RERUN_FROM_STDIN, stdin=render_bootstrap(spec))
    unit = render_units(spec)["nbcloud-data.service"]
    guest.run("sudo tee /etc/systemd/system/nbcloud-data.service >/dev/null && sudo systemctl daemon-reload "
              "&& sudo systemctl enable -q nbcloud-data.service", stdin=unit)
    link = guest.out(f"readlink -f {EBS}{volume_serial(spec.data_volume_id or '')}")
    assert guest.out("findmnt -no SOURCE /home/ubuntu/data") == link
    assert guest.out("sudo grep -c 'data: formatting new volume' /var/log/nbcloud/bootstrap.log") == "2"
    guest.run(f"echo {token} > /home/ubuntu/data/proof && sync")


def _reboot(vm: QemuVM, guest: Guest, capsys: pytest.CaptureFixture[str], spec: BootstrapSpec, token: str) -> None:
    """``systemctl reboot``: nbcloud-data.service mounts B again, without formatting it, and the file is there."""
    before = guest.out("cat /proc/sys/kernel/random/boot_id")
    started = time.monotonic()
    guest.run("sudo systemctl reboot", check=False, timeout=60)
    guest.wait_ssh(vm.alive, BOOT_TIMEOUT, not_boot=before)
    FIGURES["reboot_to_ssh_s"] = time.monotonic() - started
    state = guest.run("systemctl is-system-running --wait", check=False, timeout=BOOT_TIMEOUT).stdout.strip()
    failed = guest.out("systemctl list-units --failed --plain --no-legend | cut -d' ' -f1 | xargs")
    _say(capsys, f"after the reboot: system {state}{', failed: ' + failed if failed else ''}")
    assert guest.out("systemctl show -p Result --value nbcloud-data.service") == "success"
    link = guest.out(f"readlink -f {EBS}{volume_serial(spec.data_volume_id or '')}")
    assert guest.out("findmnt -no SOURCE /home/ubuntu/data") == link
    assert guest.out("cat /home/ubuntu/data/proof") == token
    log = guest.out("sudo cat /var/log/nbcloud/bootstrap.log")
    assert log.count("data: formatting new volume") == 2, log  # A once, B once: never again at boot
    assert log.count(f"data: {spec.data_volume_id} mounted") == 2, log


def test_boot_attach_reboot(vm: QemuVM, keys: dict[str, Path], tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    vol_a, vol_b = _volume_id(), _volume_id()
    host_public = keys["host"].with_suffix(".pub").read_text().strip()
    # NBCLOUD_STEPS: the bootstrap's data step only (the venv step would fetch Jupyter from an index: no network)
    spec = BootstrapSpec(name="qemu-smoke", host_key_private=keys["host"].read_text(), host_key_public=host_public,
                         data_volume_id=vol_a, package_env={"NBCLOUD_STEPS": "data"})
    user_data = render_user_data(spec)
    source = MetadataSource(_imds_dir(tmp_path / "imds", user_data,
                                      keys["client"].with_suffix(".pub").read_text().strip()))
    stop_imds = serve_imds(source, "127.0.0.1", vm.imds_port)
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{vm.ssh_port} {' '.join(host_public.split()[:2])}\n")
    guest = Guest(vm.ssh_port, keys["client"], known)
    token = secrets.token_hex(8)
    try:
        _first_boot(vm, guest, capsys, vol_a, user_data)
        _swap_volumes(vm, guest, vol_a, vol_b)
        spec_b = dataclasses.replace(spec, data_volume_id=vol_b)
        _bootstrap_volume(guest, spec_b, token)
        _reboot(vm, guest, capsys, spec_b, token)
    except BaseException:
        _say(capsys, f"console tail:\n{vm.console_tail()}")
        raise
    finally:
        stop_imds()
        FIGURES["whole_test_s"] = time.monotonic() - started
        _say(capsys, " ".join(f"{k}={v:.1f}" for k, v in FIGURES.items()))
