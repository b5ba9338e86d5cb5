"""Images and instance types: SSM lookups for the public images, validation with close-match suggestions."""

from __future__ import annotations

import difflib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ...errors import UsageError
from ...models import IMAGE_NAME_TAG, ImageInfo, InstanceTypeInfo

if TYPE_CHECKING:
    from .session import AwsSession

__all__ = ["IMAGE_ALIASES", "IMAGE_NAME_TAG", "create_image", "delete_image", "describe_instance_type", "list_baked",
           "resolve_image", "wait_image"]

# Public SSM parameters that always point at the current image.
IMAGE_ALIASES: dict[str, str] = {
    "ubuntu": "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id",
    "dlami": "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id",
}


def resolve_image(session: AwsSession, ref: str) -> ImageInfo:
    from ...errors import NbcloudError

    image_id = ref
    if ref in IMAGE_ALIASES:
        try:
            image_id = session.call("ssm", "get_parameter", Name=IMAGE_ALIASES[ref])["Parameter"]["Value"]
        except NbcloudError as exc:
            raise UsageError(f"cannot look up the {ref} image in {session.region}: {exc.message}",
                             "pass an AMI id with --image ami-…") from exc
    elif not ref.startswith("ami-"):
        found = session.call("ec2", "describe_images", Owners=["self"],
                             Filters=[{"Name": "tag:nbcloud:image-name", "Values": [ref]}])["Images"]
        if not found:
            raise UsageError(f"unknown image {ref!r}",
                             "use `ubuntu`, `dlami`, an AMI id (ami-…), or a name from `nbcloud image list`")
        image_id = max(found, key=lambda i: str(i.get("CreationDate", "")))["ImageId"]
    try:
        images = session.call("ec2", "describe_images", ImageIds=[image_id])["Images"]
    except NbcloudError as exc:
        raise UsageError(f"image {image_id} not found in {session.region}",
                         "AMI ids are per region: pick one from this region or use `--image ubuntu`") from exc
    if not images:
        raise UsageError(f"image {image_id} not found in {session.region}",
                         "AMI ids are per region: pick one from this region or use `--image ubuntu`")
    image = images[0]
    tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
    return ImageInfo(image_id=image["ImageId"], name=image.get("Name", ""), description=image.get("Description", ""),
                     root_device_name=image.get("RootDeviceName", "/dev/sda1"),
                     baked="nbcloud:image-name" in tags)


def describe_instance_type(session: AwsSession, name: str) -> InstanceTypeInfo:
    from ...errors import NbcloudError

    try:
        found = session.call("ec2", "describe_instance_types", InstanceTypes=[name])["InstanceTypes"]
    except NbcloudError:
        found = []
    if not found:
        offered = [t["InstanceType"] for page in session.paginate("ec2", "describe_instance_types")
                   for t in page["InstanceTypes"]]
        close = difflib.get_close_matches(name, offered, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else "see `aws ec2 describe-instance-types`"
        raise UsageError(f"unknown instance type {name!r} in {session.region}", hint)
    info = found[0]
    gpus = info.get("GpuInfo", {}).get("Gpus", [])
    return InstanceTypeInfo(
        name=name,
        vcpus=int(info.get("VCpuInfo", {}).get("DefaultVCpus", 0)),
        memory_mib=int(info.get("MemoryInfo", {}).get("SizeInMiB", 0)),
        gpus=sum(int(g.get("Count", 0)) for g in gpus),
        gpu_name=" ".join(filter(None, [gpus[0].get("Manufacturer"), gpus[0].get("Name")])) if gpus else None,
        gpu_memory_mib=int(info.get("GpuInfo", {}).get("TotalGpuMemoryInMiB", 0)),
        architecture=(info.get("ProcessorInfo", {}).get("SupportedArchitectures") or ["x86_64"])[0],
    )


def create_image(session: AwsSession, instance_id: str, ami_name: str, tags: dict[str, str],
                 exclude_devices: Sequence[str] = ()) -> str:
    """CreateImage of a (stopped) instance; its root snapshot inherits the root volume's encryption.

    ``exclude_devices`` (the data volume's) stay out of the image: data belongs on its own volume.
    """
    from .session import tags_list

    params: dict[str, Any] = {}
    if exclude_devices:
        params["BlockDeviceMappings"] = [{"DeviceName": d, "NoDevice": ""} for d in exclude_devices]
    data = session.call("ec2", "create_image", InstanceId=instance_id, Name=ami_name, NoReboot=True,
                        Description=f"nbcloud image {tags.get(IMAGE_NAME_TAG, ami_name)}",
                        TagSpecifications=[{"ResourceType": "image", "Tags": tags_list(tags)}], **params)
    return str(data["ImageId"])


def wait_image(session: AwsSession, image_id: str, timeout: float) -> dict[str, Any]:
    from ...errors import RemoteError

    deadline = time.monotonic() + timeout
    while True:
        found = session.call("ec2", "describe_images", ImageIds=[image_id])["Images"]
        state = found[0]["State"] if found else "missing"
        if state == "available":
            return dict(found[0])
        if state in {"failed", "error", "invalid", "deregistered", "missing"}:
            raise RemoteError(f"image {image_id} failed ({state})", "`nbcloud image delete` it and bake again")
        if time.monotonic() > deadline:
            raise RemoteError(f"image {image_id} still {state} after {timeout:g} s", "`nbcloud image list` later")
        time.sleep(0.5 if timeout < 600 else 5)


def image_snapshots(image: dict[str, Any]) -> list[str]:
    return [m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", [])
            if m.get("Ebs", {}).get("SnapshotId")]


def list_baked(session: AwsSession) -> list[dict[str, Any]]:
    from .session import tags_dict

    found = session.call("ec2", "describe_images", Owners=["self"],
                         Filters=[{"Name": "tag-key", "Values": [IMAGE_NAME_TAG]}])["Images"]
    out = []
    for image in found:
        tags = tags_dict(image.get("Tags"))
        out.append({"name": tags.get(IMAGE_NAME_TAG), "image_id": image["ImageId"], "state": image.get("State"),
                    "created": str(image.get("CreationDate", "")), "source": tags.get("nbcloud:source"),
                    "snapshots": image_snapshots(image), "size_gb": sum(
                        int(m.get("Ebs", {}).get("VolumeSize", 0)) for m in image.get("BlockDeviceMappings", []))})
    return sorted(out, key=lambda i: (i["name"] or "", i["created"]))


def delete_image(session: AwsSession, image_id: str) -> list[str]:
    """Deregister ``image_id`` and delete its snapshots (they bill on their own otherwise)."""
    images = session.call("ec2", "describe_images", ImageIds=[image_id])["Images"]
    snapshots = image_snapshots(images[0]) if images else []
    session.call("ec2", "deregister_image", ImageId=image_id)
    for snapshot_id in snapshots:
        session.call("ec2", "delete_snapshot", SnapshotId=snapshot_id)
    return snapshots
