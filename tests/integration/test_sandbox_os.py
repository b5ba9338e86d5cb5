"""The sandbox's ``os`` mode (issue 16, first slice): instances are containers booting a real Debian.

Each instance: real systemd as PID 1 in its own PID namespace, real cloud-init reading the gzip'd MIME user-data
and the key from the sandbox IMDS (IMDSv2), real OpenSSH, and nbcloud's bootstrap, units and agent on real
systemd. One instance, made by ``nbcloud up`` and removed by ``nbcloud down``, serves every check of this module;
its data volume (a loop device the container sees as an NVMe EBS volume) then moves to a second instance.

Skipped unless root, systemd-nspawn is installed and the image is built (``nbcloud sandbox image build``).
Its own sandbox, on ``$NBCLOUD_TEST_OS_SANDBOX_SUBNET`` (else the first free of a few): it never shares the
default-mode session sandbox.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import World, sandbox_logs, wait_until

OS_SUBNETS = ("10.205.0.0/16", "10.215.0.0/16", "10.225.0.0/16")
NAME = "osdemo"
VOLUME = "osdata"
SEEN: dict[str, str] = {}  # what later tests compare with: the data volume's id and its file system's UUID


def _wait_for_the_image_build() -> None:
    """scripts/test builds the image in the background while the suite starts (NBCLOUD_TEST_OS_IMAGE_BUILD: that
    build's directory, where it writes ``done`` when it ends, however it ends; a failed build is a skip below, with
    its reason). Not its pid: pids wrap around during the suite, and a finished build's pid soon names another
    process."""
    build = os.environ.get("NBCLOUD_TEST_OS_IMAGE_BUILD")
    if not build:
        return
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and Path(build).is_dir() and not (Path(build) / "done").exists():
        time.sleep(1)


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "os mode needs root (namespaces, overlay mounts, systemd-nspawn)"
    if shutil.which("systemd-nspawn") is None:
        return "os mode needs systemd-nspawn (apt-get install systemd-container, or `nbcloud sandbox image build`)"
    from nbcloud.sandbox.osimage import image_info

    if image_info() is None:
        return "the os-mode instance image is not built on this machine: `nbcloud sandbox image build`"
    return None


@pytest.fixture(scope="module")
def os_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    _wait_for_the_image_build()
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from nbcloud.errors import SandboxError
    from nbcloud.sandbox import client

    directory = tmp_path_factory.mktemp("os-sandbox")
    wanted = os.environ.get("NBCLOUD_TEST_OS_SANDBOX_SUBNET")
    info = None
    try:
        for subnet in (wanted,) if wanted else OS_SUBNETS:
            try:
                info = client.start(directory, subnet=subnet, os_mode=True, timeout=120)
                break
            except SandboxError as exc:
                if "used by another sandbox" not in str(exc):
                    raise
        if info is None:
            pytest.skip("every os-mode test subnet is held by another sandbox")
        yield info
    finally:
        client.reset(directory)


@pytest.fixture(scope="module")
def os_world(os_sandbox: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    world = World.under(tmp_path_factory.mktemp("os-world"), os_sandbox)
    try:
        yield world
    finally:
        world.down_all()


@pytest.fixture(scope="module")
def instance(os_world: World) -> dict[str, Any]:
    """``nbcloud up`` on the os-mode sandbox: it returns once Jupyter answers through the instance's sshd."""
    try:  # within the test's 300-s timeout, so that a hang is reported with the sandbox's logs, not only "Timeout"
        result: dict[str, Any] = os_world.up(NAME, "--data-volume", f"{VOLUME}:1", timeout=200)
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        raise AssertionError(f"{exc}\n{sandbox_logs(os_world.sandbox.sandbox_dir)}") from exc
    return result


def _run(world: World, command: str, name: str = NAME) -> dict[str, Any]:
    done = world.nb("ssh", "--json", name, "--", command, check=False)
    result: dict[str, Any] = json.loads(done.stdout or "{}")
    assert "exit_code" in result, f"nbcloud ssh {name} {command!r}: {done.stderr}"
    return result


# what a user looks at: the device and its Nitro link, what is mounted at ~/data, its UUID, the file, the formats
_LOOK = ("v=$(ls /dev/disk/by-id/ | grep nvme-Amazon_Elastic_Block_Store_vol); d=$(readlink -f /dev/disk/by-id/$v); "
         "echo \"$v $d\"; test -b $d && echo block; findmnt -no SOURCE,FSTYPE ~/data; "
         "sudo blkid -s UUID -o value $d; lsblk -no MOUNTPOINTS $d; cat ~/data/f 2>/dev/null || echo none; "
         "grep -c 'formatting new volume' /var/log/nbcloud/bootstrap.log || true")


def _data_mounted(world: World, name: str = NAME) -> bool:
    """~/data is mounted (False also while the instance boots and its sshd does not answer yet)."""
    done = world.nb("ssh", "--json", name, "--", "findmnt ~/data", check=False)
    return bool(done.stdout) and json.loads(done.stdout).get("exit_code") == 0


def _look(world: World, name: str = NAME, before: str = "", after: str = "") -> list[str]:
    """What _LOOK prints, one item a line; ``before`` must succeed first, ``after`` runs next (one ssh session)."""
    out = _run(world, (f"{before} && " if before else "") + _LOOK + (f"; {after}" if after else ""), name)
    assert out["exit_code"] == 0, out
    lines: list[str] = out["stdout"].splitlines()
    return lines


def _our_loops(sandbox: Any) -> list[str]:
    """Loop devices backed by this sandbox's files (``losetup -a``; other users' are none of ours)."""
    import subprocess

    rows = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout.splitlines()
    return [row for row in rows if str(Path(sandbox.sandbox_dir).resolve()) in row]


def test_sandbox_status_reports_os_mode_and_its_image(os_world: World) -> None:
    status = os_world.nb_json("sandbox", "status")
    assert status["mode"] == "os"
    assert Path(status["image"]["path"]).is_dir() and status["image"]["built_at"]


def test_the_instance_sees_only_its_own_processes_under_systemd(os_world: World, instance: dict[str, Any]) -> None:
    out = _run(os_world, "ps -e -o pid=,comm=")
    assert out["exit_code"] == 0
    rows = [line.split(None, 1) for line in out["stdout"].splitlines() if line.strip()]
    assert ["1", "systemd"] in rows
    # nothing of the host's: its systemd-nspawn (the container's parent), the IMDS beside it, this test
    commands = {comm for _pid, comm in rows}
    assert "systemd-nspawn" not in commands and "pytest" not in commands, commands
    assert len(rows) < 60, rows


def test_systemd_runs_and_cloud_init_is_done(os_world: World, instance: dict[str, Any]) -> None:
    state = _run(os_world, "systemctl is-system-running; systemctl --failed --no-legend --plain")
    assert state["stdout"].split()[0] in ("running", "degraded"), state["stdout"]
    cloud = _run(os_world, "cloud-init status --long")
    assert cloud["exit_code"] == 0 and "status: done" in cloud["stdout"], cloud["stdout"]
    assert "DataSourceEc2" in cloud["stdout"]  # the Ec2 datasource read the sandbox IMDS (not the None fallback)
    # nbcloud's cloud-config passes cloud-init's own schema (`ssh_genkeytypes: []` did not: "[] is too short",
    # a warning in every boot's journal)
    schema = _run(os_world, "sudo cloud-init schema --system")
    assert schema["exit_code"] == 0, schema


def test_sync_pushes_and_pulls_with_rsync_on_the_instance(os_world: World, instance: dict[str, Any],
                                                          tmp_path: Path) -> None:
    """`nbcloud sync` (and plain `rsync -e "ssh nb-NAME"`) need rsync on the instance, as an Ubuntu cloud image
    has it: the image lacked it and sync failed with 'remote command not found'."""
    project = tmp_path / "proj"
    project.mkdir()
    (project / "train.py").write_text("print('hi')\n")
    os_world.nb("sync", NAME, str(project))
    listed = _run(os_world, "find ~ -name train.py -path '*proj*' | head -1 | xargs cat")
    assert listed["stdout"] == "print('hi')\n", listed


# The host replaces /etc/group the way package tools do (a copy, a line added, renamed over the file), in the
# instance's own host-side mount namespace (systemd-nspawn's), on a tmpfs copy of /etc bound over /etc there: the real
# host file is never touched. The old netns design bound the instance's files over the host's /etc/group in that
# namespace, and a rename over a file drops the mounts on it: the instance saw the host's file (no `ubuntu`). This
# test fails on that design too (checked with a bind over /etc/group in a private namespace: the instance then reads
# the replaced file, `nbtesthost` included); a container's /etc is its own disk's and must not notice.
REPLACE_GROUP = (
    'set -e; t=$(mktemp -d); mount -t tmpfs nbtest-etc "$t"; cp -a /etc/. "$t"/; mount --bind "$t" /etc; '
    'umount -l "$t"; rmdir "$t"; cp -p /etc/group /etc/group.nbtest; echo "nbtesthost:x:4242:" >> /etc/group.nbtest; '
    'mv /etc/group.nbtest /etc/group; grep -c "^nbtesthost:" /etc/group'
)


def test_groups_survive_the_host_replacing_its_etc_group(os_world: World, os_sandbox: Any,
                                                         instance: dict[str, Any]) -> None:
    import subprocess

    host_group = Path("/etc/group").read_bytes()
    pid = (Path(os_sandbox.sandbox_dir) / "instances" / instance["instance_id"] / "init.pid").read_text().strip()
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "systemd-nspawn"
    enter = ["nsenter", f"--mount=/proc/{pid}/ns/mnt"]
    replaced = subprocess.run([*enter, "sh", "-c", REPLACE_GROUP], capture_output=True, text=True)
    try:
        assert replaced.returncode == 0 and replaced.stdout.strip() == "1", replaced  # the replacement happened
        out = _run(os_world, "getent group ubuntu; id -un; id -gn; id ubuntu; getent group nbtesthost || echo none")
        lines = out["stdout"].splitlines()
        assert lines[0].startswith("ubuntu:x:") and lines[1:3] == ["ubuntu", "ubuntu"], out
        assert "(ubuntu)" in lines[3] and "sudo" in lines[3], out  # cloud-init's groups for the default user
        assert lines[4] == "none", out  # the host's new group is not the instance's
    finally:
        # only our bind (its tmpfs is named nbtest-etc): that namespace is the instance's, never the host's
        subprocess.run([*enter, "sh", "-c", "findmnt -n -o SOURCE --mountpoint /etc | grep -q nbtest-etc && "
                        "umount -l /etc"], capture_output=True)
    assert Path("/etc/group").read_bytes() == host_group


def test_nbcloud_units_run_on_real_systemd(os_world: World, instance: dict[str, Any]) -> None:
    out = _run(os_world, "systemctl is-active nbcloud-jupyter.service nbcloud-agent.service; "
                         "systemctl show -p MainPID --value nbcloud-jupyter.service")
    lines = out["stdout"].split()
    assert lines[:2] == ["active", "active"], out
    assert int(lines[2]) > 1


def test_the_bootstrap_starts_as_its_own_unit_after_the_network_stage_and_runs_once(
        os_world: World, instance: dict[str, Any]) -> None:
    """cloud-init's bootcmd starts the bootstrap (nbcloud-bootstrap.service) once the network stage ends, instead of
    its final stage ~0.7 s later; the final stage's run of the same script waits for it and takes its result."""
    out = _run(os_world, "sudo journalctl -b -o cat -u nbcloud-bootstrap.service | grep -c 'nbcloud-bootstrap: start'; "
                         "grep -c 'nbcloud-bootstrap: start' /var/log/nbcloud/bootstrap.log; "
                         "sudo cloud-init status --long | grep -c -i error || true")
    assert out["stdout"].split() == ["1", "1", "0"], out


def test_an_image_baked_from_an_instance_carries_its_disk(os_world: World, instance: dict[str, Any]) -> None:
    """CreateImage copies the instance's layer (its venv, its files); an instance of the image starts from a copy
    of it. (It used to copy nothing in os mode: an instance of the "baked" image installed everything again.)"""
    assert _run(os_world, "echo made-before-the-bake > ~/baked.txt")["exit_code"] == 0
    baked = os_world.nb_json("image", "bake", NAME, "--image-name", "os-img")
    clone = NAME + "c"
    try:
        os_world.up(clone, "--image", "os-img")
        out = _run(os_world, "cat ~/baked.txt; grep 'step venv:' /var/log/nbcloud/bootstrap.log | tail -2", clone)
        assert out["stdout"].splitlines()[0] == "made-before-the-bake", out
        assert "already installed (baked image)" in out["stdout"], out
        os_world.nb("down", clone, "--yes")
        os_world.names.discard(clone)
    finally:
        os_world.nb("image", "delete", "os-img", "--provider", "sandbox", check=False)
    assert baked["image_id"] not in {i["image_id"] for i in os_world.nb_json("image", "list", "--provider", "sandbox")}


def test_the_bootstrap_installs_from_the_warm_uv_cache_unpacking_no_wheel(os_world: World,
                                                                          instance: dict[str, Any]) -> None:
    """The machine's cache knows the wheels by the path the instance sees them at: the venv step hard-links from
    the instance's copy of it and unpacks nothing more (it used to unzip all ~105 wheels again, 2-5 s)."""
    from nbcloud.sandbox.wheelhouse import INSTANCE_UV_CACHE, ensure_uv_cache

    warm = sorted(p.name for p in (ensure_uv_cache(inside=True) / "archive-v0").iterdir())
    out = _run(os_world, f"ls {INSTANCE_UV_CACHE}/archive-v0; grep -c 'step venv: installed' "
                         "/var/log/nbcloud/bootstrap.log")
    assert out["exit_code"] == 0, out
    *seen, installs = out["stdout"].split()
    assert installs == "1" and warm and sorted(seen) == warm, out


def test_the_data_volume_is_an_nvme_block_device_formatted_once_and_remounted_at_boot(
        os_world: World, os_sandbox: Any, instance: dict[str, Any]) -> None:
    """First attach: blank, so the bootstrap formats and mounts it; a reboot mounts the same file system again."""
    from nbcloud.sandbox import client

    attached = os_world.ec2().describe_volumes(
        Filters=[{"Name": "attachment.instance-id", "Values": [instance["instance_id"]]}])["Volumes"]
    volume_id = next(v["VolumeId"] for v in attached if v["Size"] == 1)  # the root volume is bigger
    link_dev, block, mounted, uuid, mountpoint, content, formats = _look(os_world)
    link, dev = link_dev.split()
    assert link.startswith("nvme-Amazon_Elastic_Block_Store_vol") and dev.startswith("/dev/nvme") and block == "block"
    assert link == "nvme-Amazon_Elastic_Block_Store_" + volume_id.replace("-", "")
    assert mounted.split() == [dev, "ext4"] and mountpoint.strip() == f"/home/{os_sandbox.login_user}/data"
    assert content == "none" and formats == "1"
    SEEN.update(volume=volume_id, uuid=uuid)
    assert _run(os_world, "echo kept-on-ebs > ~/data/f")["exit_code"] == 0

    def boots() -> int:
        rows = client.status(os_sandbox.sandbox_dir)["instances"]
        return next(r["boots"] for r in rows if r["instance_id"] == instance["instance_id"])

    before = boots()
    os_world.nb("ssh", NAME, "--", "sudo systemctl reboot", check=False)
    wait_until(lambda: boots() > before, 60, 0.2, "the reboot")
    wait_until(lambda: _data_mounted(os_world), 60, 0.5, "~/data mounted after reboot")
    assert _look(os_world)[1:] == [block, mounted, uuid, mountpoint, "kept-on-ebs", "1"]  # same fs, not reformatted


def test_user_data_arrives_byte_exact_through_imds(os_world: World, os_sandbox: Any,
                                                    instance: dict[str, Any]) -> None:
    """nbcloud's user-data is a gzip'd MIME multipart: the IMDS must serve EC2's bytes unchanged (IMDSv2)."""
    import boto3

    ec2 = boto3.client("ec2", endpoint_url=os_sandbox.endpoint_url, region_name=os_sandbox.region,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    attr = ec2.describe_instance_attribute(InstanceId=instance["instance_id"], Attribute="userData")
    sent = base64.b64decode(attr["UserData"]["Value"])
    assert sent[:2] == b"\x1f\x8b"  # gzip: the case the IMDS used to corrupt
    fetch = ("sudo sh -c 't=$(curl -sf -X PUT -H \"X-aws-ec2-metadata-token-ttl-seconds: 60\" "
             "http://169.254.169.254/latest/api/token) && curl -sf -H \"X-aws-ec2-metadata-token: $t\" "
             "http://169.254.169.254/latest/user-data | sha256sum'")
    out = _run(os_world, fetch)
    assert out["stdout"].split()[0] == hashlib.sha256(sent).hexdigest()


def test_shutdown_inside_is_an_ec2_stop_and_start_boots_the_same_disk(os_world: World, os_sandbox: Any,
                                                                       instance: dict[str, Any]) -> None:
    import boto3

    ec2 = boto3.client("ec2", endpoint_url=os_sandbox.endpoint_url, region_name=os_sandbox.region,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    iid = instance["instance_id"]

    def addresses() -> tuple[str, str]:
        inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
        return inst["PrivateIpAddress"], inst.get("PublicIpAddress", "")

    private, public = addresses()
    assert private and public and private != public
    # the session may end with the machine (ssh then exits 255): what counts is what the API says next
    os_world.nb("ssh", NAME, "--", "echo kept > ~/mark && sudo shutdown -h now", check=False)
    ec2.get_waiter("instance_stopped").wait(InstanceIds=[iid], WaiterConfig={"Delay": 1, "MaxAttempts": 90})
    assert not (Path(os_sandbox.sandbox_dir) / "instances" / iid / "root" / "etc").exists()  # layer unmounted
    assert not _our_loops(os_sandbox)  # its data volume's loop device went with the container
    os_world.nb("start", NAME)
    # as on EC2: the same private address (the one on eth0, DHCP's, IMDS's local-ipv4), a new public one
    assert addresses()[0] == private and addresses()[1] not in ("", public)
    # as root: nbcloud's bootstrap keeps other users away from the IMDS
    imds = ("T=$(sudo curl -s -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "
            "http://169.254.169.254/latest/api/token); for k in local-ipv4 public-ipv4; do "
            "sudo curl -s -H \"X-aws-ec2-metadata-token: $T\" http://169.254.169.254/latest/meta-data/$k; echo; done; "
            "hostname -I")
    after = _run(os_world, "cat ~/mark; systemctl is-active nbcloud-jupyter.service; cat /proc/1/comm; " + imds)
    assert after["stdout"].split() == ["kept", "active", "systemd", private, addresses()[1], private], after
    if SEEN:  # the data volume came back with the instance, the same file system, mounted by the boot
        wait_until(lambda: _data_mounted(os_world), 60, 0.5, "~/data mounted after start")
        look = _look(os_world)
        assert look[3] == SEEN["uuid"] and look[5:] == ["kept-on-ebs", "1"], look
        assert len(_our_loops(os_sandbox)) == 1  # stop released the loop device; start made it again


def test_jupyter_answers_through_the_tunnel_then_down_is_clean(os_world: World, os_sandbox: Any,
                                                               instance: dict[str, Any]) -> None:
    connected = os_world.nb_json("connect", NAME, "--no-browser")
    base, _, query = connected["url"].partition("?")
    api = base.rsplit("/lab", 1)[0] + "/api/status?" + query  # the token the URL carries
    with urllib.request.urlopen(api, timeout=30) as resp:
        assert resp.status == 200 and "started" in json.loads(resp.read())
    os_world.nb("disconnect", NAME)
    os_world.nb("down", NAME, "--yes")
    os_world.names.discard(NAME)
    from nbcloud.sandbox import client

    rows = client.status(os_sandbox.sandbox_dir)["instances"]
    assert all(r["instance_id"] != instance["instance_id"] or r["state"] == "terminated" for r in rows)
    instance_dir = Path(os_sandbox.sandbox_dir) / "instances" / instance["instance_id"]
    assert not instance_dir.exists()  # terminate deleted the layer (and unmounted it first)


def test_the_data_volume_moves_to_another_instance_and_attaches_while_it_runs(os_world: World, os_sandbox: Any,
                                                                              instance: dict[str, Any]) -> None:
    """After `down`, `up --data-volume` of a new instance attaches the kept volume: its file system is mounted, never
    reformatted. Then DetachVolume and AttachVolume through the API while that instance runs."""
    if not SEEN:
        pytest.skip("the data volume's first test did not run")
    other = NAME + "2"
    made = os_world.up(other, "--data-volume", VOLUME)
    # as on EC2: unmount, then detach
    look = _look(os_world, other, after="sudo umount ~/data")
    assert look[3] == SEEN["uuid"] and look[5:] == ["kept-on-ebs", "0"], look  # its bootstrap formatted nothing
    ec2 = os_world.ec2()
    ec2.detach_volume(VolumeId=SEEN["volume"], InstanceId=made["instance_id"])
    wait_until(lambda: not _our_loops(os_sandbox), 10, 0.2, "the loop device freed by the detach")
    gone = _run(os_world, "ls /dev/disk/by-id/ /dev | grep -c -e nvme || true", other)
    assert gone["stdout"].strip() == "0", gone  # the node and its link went with it
    ec2.attach_volume(VolumeId=SEEN["volume"], InstanceId=made["instance_id"], Device="/dev/sdf")
    # the data unit (the bootstrap's mount-data, run at every boot) waits for the device, then mounts it
    look = _look(os_world, other, before="sudo systemctl start nbcloud-data.service")
    assert look[3] == SEEN["uuid"] and look[5:] == ["kept-on-ebs", "0"], look
    # detached while mounted (a forced detach): the file system goes with the device, the loop device is freed
    ec2.detach_volume(VolumeId=SEEN["volume"], InstanceId=made["instance_id"])
    wait_until(lambda: not _our_loops(os_sandbox), 10, 0.2, "the loop device freed")
    assert not _data_mounted(os_world, other)  # ~/data went with its device
    os_world.nb("down", other, "--delete-data", "--yes")
    os_world.names.discard(other)
    assert not _our_loops(os_sandbox), _our_loops(os_sandbox)  # none of ours left behind
