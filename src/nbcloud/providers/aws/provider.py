"""The AWS provider: boto3 behind the :class:`~nbcloud.providers.base.Provider` interface.

The sandbox uses this very class, pointed at its emulated endpoint; nothing here knows the difference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import NbcloudError
from ...models import LAUNCH_TAG, NAME_TAG, ImageInfo, Instance, InstanceTypeInfo, Volume
from ...remote.spec import LOGIN_USER
from ..base import IngressRule, LaunchRequest, TaggedResource
from . import images, instances, network, placement, volumes
from .session import AwsSession, tags_dict, tags_list

if TYPE_CHECKING:
    from ...money.pricing import PriceTable

__all__ = ["AwsProvider"]


@dataclass
class AwsProvider:
    session: AwsSession
    label: str = "aws"
    checkip_url: str = network.CHECKIP_URL
    package_env: dict[str, str] = field(default_factory=dict)
    manages_machines = True  # nbcloud creates, starts, stops and terminates these machines (base.Provider)
    login_user = LOGIN_USER  # the EC2 Ubuntu images' user (base.Provider); the sandbox sets its own
    #: seconds between DescribeInstances while waiting for a state: EC2 takes tens of seconds to start an
    #: instance and counts the calls against the account's rate limit (the sandbox, which is fast, sets its own)
    poll_interval: float = 2.0

    @property
    def name(self) -> str:
        return self.label

    @property
    def region(self) -> str:
        return self.session.region

    def check_access(self) -> None:
        # DescribeAvailabilityZones is cheap, needs only ec2:Describe*, and fails fast without credentials.
        self.session.call("ec2", "describe_availability_zones", DryRun=False)

    def caller_ip(self) -> str:
        return network.caller_ip(self.checkip_url)

    def instance_type(self, name: str) -> InstanceTypeInfo:
        return images.describe_instance_type(self.session, name)

    def image(self, ref: str) -> ImageInfo:
        return images.resolve_image(self.session, ref)

    def default_zone(self, instance_type: str | None = None) -> str:
        """A zone for a new data volume: one that offers ``instance_type`` (not all do), else the first."""
        zones = sorted(z["ZoneName"] for z in self.session.call(
            "ec2", "describe_availability_zones", Filters=[{"Name": "state", "Values": ["available"]}]
        )["AvailabilityZones"])
        offered = placement.offered_zones(self.session, [instance_type]).get(instance_type) if instance_type else None
        return next((z for z in zones if z in (offered or ())), zones[0])

    # key pairs and security groups
    def import_key_pair(self, key_name: str, public_key: str, tags: dict[str, str]) -> None:
        self.session.call("ec2", "import_key_pair", KeyName=key_name, PublicKeyMaterial=public_key.encode(),
                          TagSpecifications=[{"ResourceType": "key-pair", "Tags": tags_list(tags)}])

    def delete_key_pair(self, key_name: str) -> None:
        self.session.call("ec2", "delete_key_pair", KeyName=key_name)

    def create_security_group(self, group_name: str, rules: Sequence[IngressRule], tags: dict[str, str]) -> str:
        return network.create_security_group(self.session, group_name, rules, tags)

    def set_ingress(self, group_id: str, rules: Sequence[IngressRule]) -> bool:
        return network.set_ingress(self.session, group_id, rules)

    def delete_security_group(self, group_id: str) -> None:
        network.delete_security_group(self.session, group_id)

    # instances
    def run_instance(self, request: LaunchRequest, progress: Callable[[str], None] | None = None) -> Instance:
        """Failover across zones and ``request.fallback_types`` (placement.py), each attempt said in ``progress``."""
        return placement.run_with_failover(
            self.session, request, lambda r: instances.run_instance(self.session, r, self.label),
            request.fallback_types, progress)

    def wait_running(self, instance_id: str, timeout: float) -> Instance:
        found = instances.wait_state(self.session, instance_id, self.label, {"running"}, timeout,
                                     self.poll_interval)
        if found is None:
            raise NbcloudError(f"instance {instance_id} disappeared while starting")
        return found

    def wait_gone(self, instance_id: str, state: str, timeout: float) -> None:
        instances.wait_state(self.session, instance_id, self.label, {state}, timeout, self.poll_interval)

    def find(self, name: str) -> Instance | None:
        found = instances.describe_managed(self.session, self.label, name)
        # Prefer a running one should a race ever have made two.
        found.sort(key=lambda i: (i.state != "running", i.launched_at or 0))
        return found[0] if found else None

    def list_instances(self) -> list[Instance]:
        return instances.describe_managed(self.session, self.label)

    def describe(self, instance_id: str) -> Instance | None:
        return instances.describe_one(self.session, instance_id, self.label)

    def start(self, instance_id: str) -> None:
        self.session.call("ec2", "start_instances", InstanceIds=[instance_id])

    def stop(self, instance_id: str) -> None:
        self.session.call("ec2", "stop_instances", InstanceIds=[instance_id])

    def set_instance_type(self, instance_id: str, instance_type: str) -> None:
        """A stopped instance's type (EC2 refuses it on a running one: IncorrectInstanceState)."""
        self.session.call("ec2", "modify_instance_attribute", InstanceId=instance_id,
                          InstanceType={"Value": instance_type})

    def terminate(self, instance_id: str) -> None:
        self.session.call("ec2", "terminate_instances", InstanceIds=[instance_id])

    def set_name_tags(self, resource_ids: Sequence[str], tags: dict[str, str]) -> None:
        self.session.call("ec2", "create_tags", Resources=list(resource_ids), Tags=tags_list(tags))

    # volumes
    def create_volume(self, size_gb: int, zone: str, tags: dict[str, str]) -> Volume:
        return volumes.create(self.session, size_gb, zone, tags)

    def find_volume(self, volume_name: str) -> Volume | None:
        return volumes.find_by_name(self.session, volume_name)

    def attach_volume(self, volume_id: str, instance_id: str, device: str) -> None:
        volumes.attach(self.session, volume_id, instance_id, device)

    def detach_volume(self, volume_id: str, instance_id: str) -> None:
        volumes.detach(self.session, volume_id, instance_id)

    def delete_volume(self, volume_id: str) -> None:
        volumes.delete(self.session, volume_id)

    def list_volumes(self) -> list[Volume]:
        return volumes.list_managed(self.session)

    def create_volume_from_snapshot(self, snapshot_id: str, zone: str, tags: dict[str, str]) -> Volume:
        return volumes.create_from_snapshot(self.session, snapshot_id, zone, tags)

    def snapshot_volume(self, volume_id: str, description: str, tags: dict[str, str]) -> str:
        return volumes.snapshot(self.session, volume_id, description, tags)

    def delete_snapshot(self, snapshot_id: str) -> None:
        volumes.delete_snapshot(self.session, snapshot_id)

    def list_snapshots(self) -> list[dict[str, Any]]:
        return volumes.list_snapshots(self.session)

    # spot prices and images
    def spot_price(self, instance_type: str, zone: str | None = None) -> float | None:
        from .pricing import fetch_spot

        return fetch_spot(self.session.client("ec2"), instance_type, zone)

    def on_demand_price(self, instance_type: str) -> float | None:
        """The live on-demand $/h in this region (Pricing API), None when it cannot be read."""
        from .pricing import fetch_hourly

        return fetch_hourly(self.session, instance_type, self.region)

    def refresh_prices(self, path: Path, regions: Sequence[str]) -> PriceTable:
        """`nbcloud prices refresh`: on-demand and EBS prices from the AWS Price List API, merged into the table in
        use and written to ``path``."""
        from .pricing import refresh_prices

        return refresh_prices(self.session, path, regions=list(regions))

    def create_image(self, instance_id: str, ami_name: str, tags: dict[str, str], *,
                     exclude_devices: Sequence[str] = (), timeout: float = 3600) -> str:
        image_id = images.create_image(self.session, instance_id, ami_name, tags, exclude_devices)
        try:
            data = images.wait_image(self.session, image_id, timeout)
        except BaseException:
            images.delete_image(self.session, image_id)
            raise
        snapshots = images.image_snapshots(data)
        if snapshots:  # CreateImage cannot tag snapshots everywhere: tag them after, so they are found by name
            self.set_name_tags(snapshots, tags)
        return image_id

    def list_images(self) -> list[dict[str, Any]]:
        return images.list_baked(self.session)

    def delete_image(self, image_id: str) -> list[str]:
        return images.delete_image(self.session, image_id)

    # orphans
    def tagged_resources(self, name: str | None = None) -> list[TaggedResource]:
        """Everything carrying nbcloud's name tag (optionally for one name): the truth for orphan scans."""
        tag_filter = ([{"Name": f"tag:{NAME_TAG}", "Values": [name]}] if name
                      else [{"Name": "tag-key", "Values": [NAME_TAG]}])
        found: list[TaggedResource] = []

        def add(kind: str, rid: str, tags: list[dict[str, str]] | None, state: str | None = None) -> None:
            t = tags_dict(tags)
            found.append(TaggedResource(kind, rid, t.get(NAME_TAG), t.get(LAUNCH_TAG), state))

        for page in self.session.paginate("ec2", "describe_instances", Filters=tag_filter):
            for reservation in page["Reservations"]:
                for i in reservation["Instances"]:
                    if i["State"]["Name"] != "terminated":
                        add("instance", i["InstanceId"], i.get("Tags"), i["State"]["Name"])
        for g in self.session.call("ec2", "describe_security_groups", Filters=tag_filter)["SecurityGroups"]:
            add("security-group", g["GroupId"], g.get("Tags"))
        for k in self.session.call("ec2", "describe_key_pairs", Filters=tag_filter)["KeyPairs"]:
            add("key-pair", k["KeyName"], k.get("Tags"))
        for v in self.session.call("ec2", "describe_volumes", Filters=tag_filter)["Volumes"]:
            if v["State"] not in {"deleting", "deleted"}:
                add("volume", v["VolumeId"], v.get("Tags"), v["State"])
        return found

    def delete_resource(self, resource: TaggedResource) -> None:
        if resource.kind == "instance":
            self.terminate(resource.resource_id)
            self.wait_gone(resource.resource_id, "terminated", 300)
        elif resource.kind == "security-group":
            self.delete_security_group(resource.resource_id)
        elif resource.kind == "key-pair":
            self.delete_key_pair(resource.resource_id)
        elif resource.kind == "volume":
            self.delete_volume(resource.resource_id)
