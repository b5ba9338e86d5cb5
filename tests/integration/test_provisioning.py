"""Issue 4 on the sandbox: up/ssh/stop/start/down, secure defaults, rollback at every step, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from nbcloud.errors import CapacityError, QuotaError, RemoteError
from nbcloud.models import InstanceSpec

pytestmark = [pytest.mark.sandbox]


def test_up_ssh_stop_start_down(world) -> None:
    result = world.up("demo", "--data-volume", "5")
    assert {"name", "instance_id", "state", "host", "user"} <= set(result)
    assert result["state"] == "running" and result["user"] == "ubuntu"
    assert world.ssh("nb-demo", "whoami").stdout.strip() == "ubuntu"

    # The real AWS CLI against the sandbox endpoint: only port 22, from one /32.
    groups = json.loads(subprocess.run(
        [sys.executable, "-m", "awscli", "ec2", "describe-security-groups", "--endpoint-url",
         world.sandbox.endpoint_url, "--region", world.sandbox.region, "--filters",
         "Name=tag:nbcloud:name,Values=demo", "--output", "json"],
        capture_output=True, text=True, env=world.env | {"AWS_ACCESS_KEY_ID": "testing",
                                                         "AWS_SECRET_ACCESS_KEY": "testing"},
        check=True).stdout)["SecurityGroups"]
    assert len(groups) == 1
    rules = groups[0]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"], r["IpProtocol"]) for r in rules] == [(22, 22, "tcp")]
    cidrs = [ip["CidrIp"] for ip in rules[0]["IpRanges"]]
    assert len(cidrs) == 1 and cidrs[0].endswith("/32") and cidrs[0] == f"{world.sandbox.caller_ip}/32"

    ec2 = world.ec2()
    instance = ec2.describe_instances(InstanceIds=[result["instance_id"]])["Reservations"][0]["Instances"][0]
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    volume_ids = [m["Ebs"]["VolumeId"] for m in instance["BlockDeviceMappings"]]
    volumes = ec2.describe_volumes(VolumeIds=volume_ids)["Volumes"]
    assert len(volumes) == 2 and all(v["Encrypted"] for v in volumes)
    behaviour = ec2.describe_instance_attribute(InstanceId=result["instance_id"],
                                                Attribute="instanceInitiatedShutdownBehavior")
    assert behaviour["InstanceInitiatedShutdownBehavior"]["Value"] == "stop"

    world.nb("stop", "demo")
    assert world.ssh("nb-demo", timeout=20).returncode != 0
    started = world.nb_json("start", "demo", "--no-wait")
    assert started["state"] == "running"
    assert started["host"] != result["host"], "a start gives a new address, as on AWS"
    assert world.ssh("nb-demo").returncode == 0, "the ssh entry followed the new address"

    down = world.nb_json("down", "demo")
    left = world.tagged("demo")
    assert [r.kind for r in left] == ["volume"], left  # the data volume alone is kept
    assert any("data volume" in k for k in down["kept"])
    world.nb("down", "demo", check=False)
    ec2.delete_volume(VolumeId=left[0].resource_id)


def test_swapped_host_key_is_refused_not_prompted(world) -> None:
    world.up("keyswap", "--idle-stop", "off")
    from nbcloud.config import paths
    from nbcloud.ssh import config as ssh_config
    from nbcloud.ssh.keys import generate_ed25519

    # The instance now presents a key other than the pinned one (as an interceptor or a replaced host would).
    ssh_config.pin_host_key(paths(), "nb-keyswap", generate_ed25519("impostor").public_blob)
    done = world.nb("ssh", "keyswap", "--", "true", check=False, timeout=30)
    assert done.returncode != 0
    assert "Host key verification failed" in done.stderr or "IDENTIFICATION HAS CHANGED" in done.stderr
    assert "yes/no" not in done.stderr
    plain = world.ssh("nb-keyswap")
    assert plain.returncode != 0 and "yes/no" not in plain.stderr


def test_two_concurrent_ups_make_one_instance(world) -> None:
    world.names.add("twin")
    cmd = ["up", "twin", "--provider", "sandbox", "--no-connect", "--json"]
    outputs: list[subprocess.CompletedProcess[str]] = []

    def run() -> None:
        outputs.append(world.nb(*cmd, check=False))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(o.returncode == 0 for o in outputs), [o.stderr for o in outputs]
    ids = {json.loads(o.stdout)["instance_id"] for o in outputs}
    assert len(ids) == 1
    assert sum(1 for o in outputs if json.loads(o.stdout)["reused"]) == 1
    assert len([r for r in world.tagged("twin") if r.kind == "instance"]) == 1


@pytest.mark.parametrize(("args", "expect"), [
    (["--instance-type", "t3.mediun"], "did you mean t3.medium"),
    (["--instance-type", "t9.bogus"], "unknown instance type"),
    (["--image", "ami-00000000deadbeef0"], "not found"),
    (["--region", "xx-nowhere-1"], "unknown"),
])
def test_bad_input_creates_nothing(world, args: list[str], expect: str) -> None:
    done = world.nb("up", "bad", "--provider", "sandbox", "--no-connect", *args, check=False)
    assert done.returncode == 2, done
    assert expect in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert world.tagged("bad") == []


def test_missing_key_file_and_terminated_elsewhere(world) -> None:
    result = world.up("lost", "--idle-stop", "off")
    from nbcloud.config import paths

    key = paths().keys_dir / "lost"
    saved = key.read_bytes()
    key.unlink()
    done = world.nb("ssh", "lost", "--", "true", check=False)
    assert done.returncode == 2 and "private key for 'lost' is missing" in done.stderr
    key.write_bytes(saved)
    key.chmod(0o600)

    world.ec2().terminate_instances(InstanceIds=[result["instance_id"]])
    again = world.nb("up", "lost", "--provider", "sandbox", "--no-connect", check=False)
    assert again.returncode == 2 and "terminated outside nbcloud" in again.stderr, again.stderr
    world.ec2().get_waiter("instance_terminated").wait(InstanceIds=[result["instance_id"]],
                                                       WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    assert [r.kind for r in world.tagged("lost") if r.kind == "instance"] == [], "up made no new instance"


# Failure injection at each step of `up`; after each, a tag scan must find nothing left for the name.

def _up_with(world, name: str, on_progress=None, **spec: Any) -> None:
    from nbcloud import ops

    ctx = ops.Context.create()

    def progress(message: str) -> None:
        if on_progress:
            on_progress(ctx, message)

    ops.up(ctx, InstanceSpec(name=name, **spec), provider_name="sandbox", progress=progress, ssh_timeout=15)


@pytest.mark.parametrize(("operation", "code", "error"), [
    ("CreateSecurityGroup", "RequestLimitExceeded", RemoteError),      # after the key pair
    ("RunInstances", "InsufficientInstanceCapacity", CapacityError),  # after the security group
    ("RunInstances", "VcpuLimitExceeded", QuotaError),
    ("AttachVolume", "IncorrectState", Exception),                   # after the instance and a new volume
])
def test_rollback_on_api_failure(world, operation: str, code: str, error: type[Exception], monkeypatch) -> None:
    from nbcloud.sandbox import client as sandbox

    # botocore retries a throttle 8 times with backoff (about a minute); two attempts prove the rollback as well
    monkeypatch.setenv("NBCLOUD_AWS_RETRIES", "2")
    sandbox.fault_api(operation, code, count=10, sandbox_dir=world.sandbox.sandbox_dir)
    try:
        with pytest.raises(error):
            _up_with(world, "rb", data_volume="3")
    finally:
        sandbox.fault_api(operation, code, count=0, sandbox_dir=world.sandbox.sandbox_dir)
    assert world.tagged("rb") == []


def test_rollback_when_instance_never_reachable(world) -> None:
    from nbcloud.errors import SandboxError
    from nbcloud.sandbox import client as sandbox

    def cut_link(ctx, message: str) -> None:
        if not message.startswith("waiting for ssh"):
            return
        deadline = time.monotonic() + 30
        while True:  # the host may still be booting: a link can be cut once it exists
            try:
                sandbox.fault(ctx.store.get("rb2").instance_id, "link-down", sandbox_dir=world.sandbox.sandbox_dir)
                return
            except SandboxError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    with pytest.raises(RemoteError, match="did not accept SSH"):
        _up_with(world, "rb2", on_progress=cut_link)
    assert world.tagged("rb2") == []


def test_rollback_on_ctrl_c_during_wait(world) -> None:
    def interrupt(ctx, message: str) -> None:
        if message.startswith("waiting for ssh"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _up_with(world, "rb3", on_progress=interrupt)
    assert world.tagged("rb3") == []
    from nbcloud.config import paths

    assert not (paths().keys_dir / "rb3").exists()
