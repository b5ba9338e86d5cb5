"""Images and instance types: SSM lookups for the public images, validation with close-match suggestions."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from ...errors import UsageError
from ...models import ImageInfo, InstanceTypeInfo

if TYPE_CHECKING:
    from .session import AwsSession

__all__ = ["IMAGE_ALIASES", "describe_instance_type", "resolve_image"]

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
        image_id = found[0]["ImageId"]
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
