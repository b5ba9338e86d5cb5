"""Issue 8 on the sandbox: spot reclaim without losing work, data volumes that outlive instances, baked images."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.sandbox]

NOTEBOOK = {"cells": [{"cell_type": "code", "source": "x = 42  # saved before the notice", "metadata": {},
                       "outputs": [], "execution_count": None}],
            "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def _save_notebook(world: Any, alias: str, path: str) -> None:
    body = json.dumps({"type": "notebook", "content": NOTEBOOK})
    command = ("curl -sf -o /dev/null -w '%{http_code}' -X PUT "
               "-H \"Authorization: token $(cat ~/.config/nbcloud/token)\" -H 'Content-Type: application/json' "
               f"http://127.0.0.1:8888/api/contents/{path} --data-binary @-")
    done = world.ssh(alias, f"cat > /tmp/nb.json <<'EOF'\n{body}\nEOF\n{command.replace('@-', '@/tmp/nb.json')}")
    assert done.stdout.strip() in {"200", "201"}, done


def _wait(what: str, check: Any, timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:g} s")
        time.sleep(interval)


def _volume(world: Any, name: str) -> dict[str, Any] | None:
    return next((v for v in world.nb_json("volumes", "--provider", "sandbox") if v["name"] == name), None)


def test_spot_reclaim_keeps_the_notebook_and_up_relaunches(world: Any) -> None:
    from nbcloud.sandbox import client

    first = world.up("spotty", "--spot", "--data-volume", "spotdata:1", "--idle-stop", "off")
    _save_notebook(world, "nb-spotty", "data/work.ipynb")
    view = world.nb_json("status", "spotty")
    assert view["lifecycle"] == "spot" and view["spot_hourly_usd"] is not None, view
    assert "spot" in world.nb("status").stdout

    client.fault(first["instance_id"], "spot-notice", world.sandbox.sandbox_dir, seconds=20)
    started = time.monotonic()
    record = _wait("interruption.json", lambda: world.ssh(
        "nb-spotty", "cat /var/lib/nbcloud/interruption.json 2>/dev/null").stdout.strip(), 30)
    print(f"agent recorded the notice after {time.monotonic() - started:.1f} s")
    assert json.loads(record)["notice"]["action"] == "terminate"
    on_volume = Path(world.sandbox.sandbox_dir, "volumes", first["data_volume_id"], "work.ipynb")
    assert "x = 42" in on_volume.read_text()  # on the data volume itself, not the root disk
    assert world.nb_json("status", "spotty")["spot_notice"]

    gone = _wait("reclaimed", lambda: world.nb_json("status", "spotty")["state"] == "gone", 90)
    assert gone and "launches a new one" in world.nb("status").stdout
    # the cloud's word for it (StateReason), not a guess from the instance being gone
    view = world.nb_json("status", "spotty")
    assert view["spot_reclaimed"] is True and view["state_reason"] == "Server.SpotInstanceTermination", view
    assert "EC2 reclaimed the spot instance (Server.SpotInstanceTermination)" in world.nb("status").stdout

    again = world.up("spotty")  # the stored spec: spot, same data volume, same zone
    assert again["instance_id"] != first["instance_id"] and not again["reused"]
    assert again["data_volume_id"] == first["data_volume_id"]
    assert "x = 42" in world.ssh("nb-spotty", "cat ~/data/work.ipynb").stdout
    assert world.nb_json("status", "spotty")["lifecycle"] == "spot"
    assert world.nb_json("doctor", "--orphans", "--provider", "sandbox")["orphans"] == []
    kinds = sorted(r.kind for r in world.tagged("spotty"))
    # the new instance, its key pair, group and root volume, and the data volume: nothing of the reclaimed one
    assert kinds == ["instance", "key-pair", "security-group", "volume", "volume"], kinds


def test_spot_fallback_to_on_demand_when_no_capacity(world: Any) -> None:
    from nbcloud.sandbox import client

    # no spot capacity in any zone (`up` tries each zone offering the type before on-demand)
    offers = world.ec2().describe_instance_type_offerings(
        LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": ["t3.medium"]}])
    zones = sorted(o["Location"] for o in offers["InstanceTypeOfferings"])
    for zone in zones:
        client.fault_api("RunInstances", "InsufficientInstanceCapacity", 1, world.sandbox.sandbox_dir, zone=zone)
    try:
        world.up("fallback", "--spot", "--spot-fallback", "--idle-stop", "off")
    finally:
        for zone in zones:
            client.fault_api("RunInstances", "InsufficientInstanceCapacity", 0, world.sandbox.sandbox_dir, zone=zone)
    view = world.nb_json("status", "fallback")
    assert view["state"] == "running" and view["lifecycle"] == "on-demand"
    assert world.nb_json("doctor", "--orphans", "--provider", "sandbox")["orphans"] == []


def test_data_volume_reuse_zone_move_and_snapshot_on_down(world: Any) -> None:
    first = world.up("vols", "--data-volume", "keepme:1", "--idle-stop", "off")
    assert world.ssh("nb-vols", "echo kept > ~/data/file.txt && sync").returncode == 0
    down = world.nb_json("down", "vols")
    assert any(first["data_volume_id"] in k for k in down["kept"])
    volume = _volume(world, "keepme")
    assert volume and volume["state"] == "available" and volume["monthly_usd"] > 0
    assert "$/MONTH" in world.nb("volumes", "--provider", "sandbox").stdout

    moved = world.nb("up", "vols", "--provider", "sandbox", "--no-connect", "--data-volume", "keepme:1",
                     "--zone", "us-east-1b", "--idle-stop", "off")
    assert "moving it through a snapshot" in moved.stderr or moved.returncode == 0
    now = _volume(world, "keepme")
    assert now and now["zone"] == "us-east-1b" and now["volume_id"] != first["data_volume_id"]
    assert world.ssh("nb-vols", "cat ~/data/file.txt").stdout.strip() == "kept"
    assert len([v for v in world.nb_json("volumes", "--provider", "sandbox") if v["name"] == "keepme"]) == 1

    ec2 = world.ec2()
    result = world.nb_json("down", "vols", "--snapshot-on-down", "--delete-data", "--yes")
    try:
        assert len(result["snapshots"]) == 1 and _volume(world, "keepme") is None
        snap = ec2.describe_snapshots(SnapshotIds=result["snapshots"])["Snapshots"][0]
        tags = {t["Key"]: t["Value"] for t in snap.get("Tags", [])}
        assert snap["State"] == "completed" and tags["nbcloud:volume"] == "keepme"
        snapshot_dir = Path(world.sandbox.sandbox_dir, "snapshots", result["snapshots"][0])
        assert (snapshot_dir / "file.txt").read_text().strip() == "kept"
    finally:
        for snapshot_id in result["snapshots"]:
            ec2.delete_snapshot(SnapshotId=snapshot_id)


def test_bake_then_up_from_the_image_skips_the_install(world: Any) -> None:
    world.up("baker", "--idle-stop", "off")
    old_key = world.ssh("nb-baker", "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout
    old_token = world.ssh("nb-baker", "cat ~/.config/nbcloud/token").stdout
    try:
        baked = world.nb_json("image", "bake", "baker", "--image-name", "test-img")
        assert baked["image_id"].startswith("ami-") and baked["restarted"]
        images = world.nb_json("image", "list", "--provider", "sandbox")
        assert [i["image_id"] for i in images if i["name"] == "test-img"] == [baked["image_id"]]
        status = "curl -s -o /dev/null -w '%{http_code}' -H \"Authorization: token $(cat ~/.config/nbcloud/token)\" " \
                 "http://127.0.0.1:8888/api/status"
        assert world.ssh("nb-baker", status).stdout == "200"  # the source is back, with its secrets
        # the image carries the source's host key of the moment: the source made itself a new one afterwards
        new_key = world.ssh("nb-baker", "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.strip()
        assert new_key and new_key != old_key.strip()

        world.up("clone", "--image", "test-img", "--idle-stop", "off")
        assert world.ssh("nb-clone", status).stdout == "200"
        venv = world.ssh("nb-clone", "grep 'step venv:' /var/log/nbcloud/bootstrap.log | tail -2").stdout
        assert "already installed (baked image)" in venv, venv
        assert world.ssh("nb-clone", "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout != old_key
        assert world.ssh("nb-clone", "cat ~/.config/nbcloud/token").stdout != old_token
    finally:
        world.nb("image", "delete", "test-img", "--provider", "sandbox", check=False)
    assert world.nb_json("image", "list", "--provider", "sandbox") == []
    snapshots = world.ec2().describe_snapshots(OwnerIds=["self"])["Snapshots"]
    assert not [s for s in snapshots if baked["image_id"] in s.get("Description", "")]


def test_sandbox_mounts_a_volume_attached_during_boot(sandbox: Any, sandbox_ec2: Any) -> None:
    from nbcloud.sandbox import client

    ami = sandbox_ec2.describe_images(Owners=["099720109477"])["Images"][0]["ImageId"]
    instance_id = sandbox_ec2.run_instances(ImageId=ami, InstanceType="t3.micro", MinCount=1, MaxCount=1,
                                            Placement={"AvailabilityZone": "us-east-1a"})["Instances"][0]["InstanceId"]
    volume_id = sandbox_ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    try:
        sandbox_ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")  # still booting

        def mounted() -> bool:
            rows = [r for r in client.status(sandbox.sandbox_dir)["instances"] if r["instance_id"] == instance_id]
            if not rows or not rows[0]["init_pid"]:
                return False
            try:
                return f"/mnt/sandbox-volumes/{volume_id}" in Path(f"/proc/{rows[0]['init_pid']}/mountinfo").read_text()
            except OSError:
                return False

        assert _wait("volume mounted in the instance", mounted, 30)
    finally:
        sandbox_ec2.terminate_instances(InstanceIds=[instance_id])
        sandbox_ec2.get_waiter("instance_terminated").wait(InstanceIds=[instance_id],
                                                           WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        sandbox_ec2.delete_volume(VolumeId=volume_id)
