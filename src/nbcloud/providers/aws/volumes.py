"""Encrypted EBS data volumes that outlive instances, found by name tag."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

from ...errors import NbcloudError, NotFoundError, RemoteError
from ...models import VOLUME_NAME_TAG, Volume
from .session import tags_dict, tags_list

if TYPE_CHECKING:
    from .session import AwsSession

__all__ = ["VOLUME_NAME_TAG", "attach", "create", "create_from_snapshot", "delete", "delete_snapshot", "find_by_name",
           "list_managed", "list_snapshots", "snapshot"]



def volume_from_api(data: dict[str, Any]) -> Volume:
    tags = tags_dict(data.get("Tags"))
    attachments = data.get("Attachments") or []
    return Volume(volume_id=data["VolumeId"], name=tags.get(VOLUME_NAME_TAG), size_gb=int(data["Size"]),
                  zone=data["AvailabilityZone"], state=data["State"], volume_type=data.get("VolumeType", "gp3"),
                  encrypted=bool(data.get("Encrypted")),
                  attached_to=attachments[0]["InstanceId"] if attachments else None, tags=tags)


def create(session: AwsSession, size_gb: int, zone: str, tags: dict[str, str]) -> Volume:
    data = session.call("ec2", "create_volume", AvailabilityZone=zone, Size=size_gb, VolumeType="gp3", Encrypted=True,
                        TagSpecifications=[{"ResourceType": "volume", "Tags": tags_list(tags)}])
    wait(session, data["VolumeId"], {"available"}, 120)
    return volume_from_api(data)


def wait(session: AwsSession, volume_id: str, states: set[str], timeout: float) -> Volume:
    deadline = time.monotonic() + timeout
    while True:
        volume = volume_from_api(session.call("ec2", "describe_volumes", VolumeIds=[volume_id])["Volumes"][0])
        if volume.state in states:
            return volume
        if time.monotonic() > deadline:
            raise RemoteError(f"volume {volume_id} still {volume.state} after {timeout:g} s", "retry later")
        time.sleep(0.5)


def find_by_name(session: AwsSession, volume_name: str) -> Volume | None:
    found = session.call("ec2", "describe_volumes",
                         Filters=[{"Name": f"tag:{VOLUME_NAME_TAG}", "Values": [volume_name]}])["Volumes"]
    live = [volume_from_api(v) for v in found if v["State"] not in {"deleting", "deleted"}]
    return live[0] if live else None


def list_managed(session: AwsSession) -> list[Volume]:
    found = session.call("ec2", "describe_volumes", Filters=[{"Name": "tag-key", "Values": [VOLUME_NAME_TAG]}])
    return [volume_from_api(v) for v in found["Volumes"] if v["State"] not in {"deleting", "deleted"}]


def attach(session: AwsSession, volume_id: str, instance_id: str, device: str) -> None:
    session.call("ec2", "attach_volume", VolumeId=volume_id, InstanceId=instance_id, Device=device)
    wait(session, volume_id, {"in-use"}, 120)


def detach(session: AwsSession, volume_id: str, instance_id: str) -> None:
    try:
        session.call("ec2", "detach_volume", VolumeId=volume_id, InstanceId=instance_id)
    except NbcloudError as exc:
        if "not attached" not in exc.message.lower() and "IncorrectState" not in exc.message:
            raise
    wait(session, volume_id, {"available"}, 120)


def delete(session: AwsSession, volume_id: str) -> None:
    with contextlib.suppress(NotFoundError):  # already gone is what we wanted
        session.call("ec2", "delete_volume", VolumeId=volume_id)


def create_from_snapshot(session: AwsSession, snapshot_id: str, zone: str, tags: dict[str, str]) -> Volume:
    data = session.call("ec2", "create_volume", AvailabilityZone=zone, SnapshotId=snapshot_id, VolumeType="gp3",
                        Encrypted=True, TagSpecifications=[{"ResourceType": "volume", "Tags": tags_list(tags)}])
    return wait(session, data["VolumeId"], {"available"}, 600)


def snapshot(session: AwsSession, volume_id: str, description: str, tags: dict[str, str],
             timeout: float = 3600) -> str:
    """Snapshot ``volume_id`` (tagged) and wait until it is completed; an incomplete snapshot is deleted."""
    data = session.call("ec2", "create_snapshot", VolumeId=volume_id, Description=description,
                        TagSpecifications=[{"ResourceType": "snapshot", "Tags": tags_list(tags)}])
    snapshot_id = data["SnapshotId"]
    try:
        wait_snapshot(session, snapshot_id, timeout)
    except BaseException:
        delete_snapshot(session, snapshot_id)
        raise
    return str(snapshot_id)


def wait_snapshot(session: AwsSession, snapshot_id: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        found = session.call("ec2", "describe_snapshots", SnapshotIds=[snapshot_id])["Snapshots"]
        state = found[0]["State"] if found else "missing"
        if state == "completed":
            return
        if state in {"error", "missing"}:
            raise RemoteError(f"snapshot {snapshot_id} failed ({state})", "retry; the volume is untouched")
        if time.monotonic() > deadline:
            raise RemoteError(f"snapshot {snapshot_id} still {state} after {timeout:g} s", "retry later")
        time.sleep(0.5 if timeout < 600 else 3)


def delete_snapshot(session: AwsSession, snapshot_id: str) -> None:
    try:
        session.call("ec2", "delete_snapshot", SnapshotId=snapshot_id)
    except NbcloudError as exc:
        if "NotFound" not in exc.message and "does not exist" not in exc.message:
            raise


def list_snapshots(session: AwsSession) -> list[dict[str, Any]]:
    """nbcloud's data-volume snapshots (tagged with the volume name)."""
    found = session.call("ec2", "describe_snapshots", OwnerIds=["self"],
                         Filters=[{"Name": "tag-key", "Values": [VOLUME_NAME_TAG]}])["Snapshots"]
    return [{"snapshot_id": s["SnapshotId"], "volume_id": s.get("VolumeId"), "size_gb": int(s.get("VolumeSize", 0)),
             "state": s["State"], "started": str(s.get("StartTime", "")), "tags": tags_dict(s.get("Tags"))}
            for s in found]
