"""EC2 instances: launch with secure defaults, describe by tag in one paginated call, lifecycle."""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ...errors import NotFoundError, RemoteError
from ...models import LAUNCH_TAG, NAME_TAG, Instance
from ...money.cost import parse_transition_time
from .session import tags_dict, tags_list

if TYPE_CHECKING:
    from ..base import LaunchRequest
    from .session import AwsSession

__all__ = ["describe_managed", "instance_from_api", "reach_address", "run_instance", "wait_state"]

LIVE_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")
_ENDED_STATES = frozenset({"stopping", "stopped", "shutting-down", "terminated"})


def reach_address(data: dict[str, Any]) -> str | None:
    """The address nbcloud connects to (ssh, tunnel, TLS): the public one. Only a running instance that has none
    (a subnet without public addresses, reached through a VPN) is reached by its private one: a stopped instance
    has no public address (EC2 releases it) and its private one is not where it will be reachable after start."""
    if data.get("PublicIpAddress"):
        return str(data["PublicIpAddress"])
    if data.get("State", {}).get("Name") == "running" and data.get("PrivateIpAddress"):
        return str(data["PrivateIpAddress"])
    return None


def instance_from_api(data: dict[str, Any], region: str, provider: str) -> Instance:
    tags = tags_dict(data.get("Tags"))
    launched = data.get("LaunchTime")
    state = data["State"]["Name"]
    # "User initiated (2026-11-23 15:00:00 GMT)": when the stop began, also for the agent's own shutdown. A running
    # instance's reason is empty on AWS and may still hold an old stop's elsewhere: read it only when stopped.
    stopped_at = parse_transition_time(data.get("StateTransitionReason")) if state in _ENDED_STATES else None
    return Instance(
        name=tags.get(NAME_TAG, data["InstanceId"]),
        instance_id=data["InstanceId"],
        state=state,
        instance_type=data["InstanceType"],
        region=region,
        provider=provider,
        host=reach_address(data),
        private_ip=data.get("PrivateIpAddress"),
        zone=data.get("Placement", {}).get("AvailabilityZone"),
        launch_id=tags.get(LAUNCH_TAG),
        launched_at=launched if isinstance(launched, datetime) else None,
        lifecycle="spot" if data.get("InstanceLifecycle") == "spot" else "on-demand",
        image_id=data.get("ImageId"),
        security_group_id=(data.get("SecurityGroups") or [{}])[0].get("GroupId"),
        key_name=data.get("KeyName"),
        volume_ids=tuple(m["Ebs"]["VolumeId"] for m in data.get("BlockDeviceMappings", []) if "Ebs" in m),
        tags=tags,
        stopped_at=stopped_at,
        state_reason=(data.get("StateReason") or {}).get("Code") or None,
    )


def run_instance(session: AwsSession, request: LaunchRequest, provider: str) -> Instance:
    """One RunInstances call; botocore's ClientError passes through (failover reads its code)."""
    tags = tags_list(request.tags)
    params: dict[str, Any] = {
        "ImageId": request.image_id,
        "InstanceType": request.instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "KeyName": request.key_name,
        "SecurityGroupIds": [request.security_group_id],
        "UserData": request.user_data,
        # Idempotency: a retried RunInstances with the same token never makes a second instance.
        "ClientToken": f"nbcloud-{request.launch_id}",
        "InstanceInitiatedShutdownBehavior": "terminate" if request.spot else "stop",
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
        "BlockDeviceMappings": [{
            "DeviceName": "/dev/sda1",
            "Ebs": {"VolumeSize": request.disk_gb, "VolumeType": "gp3", "Encrypted": True,
                    "DeleteOnTermination": True},
        }],
        "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                              {"ResourceType": "volume", "Tags": tags}],
    }
    if request.zone:
        params["Placement"] = {"AvailabilityZone": request.zone}
    if request.spot:
        options: dict[str, Any] = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
        if request.max_price:
            options["MaxPrice"] = f"{request.max_price:.4f}"
        params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": options}
    data = session.client("ec2").run_instances(**params)["Instances"][0]
    return instance_from_api(data, session.region, provider)


def describe_managed(session: AwsSession, provider: str, name: str | None = None) -> list[Instance]:
    """Every nbcloud instance (or one name's) in a single paginated DescribeInstances."""
    filters = [{"Name": "tag-key", "Values": [NAME_TAG]}, {"Name": "instance-state-name", "Values": list(LIVE_STATES)}]
    if name:
        filters.append({"Name": f"tag:{NAME_TAG}", "Values": [name]})
    found = []
    for page in session.paginate("ec2", "describe_instances", Filters=filters, PaginationConfig={"PageSize": 1000}):
        for reservation in page["Reservations"]:
            found += [instance_from_api(i, session.region, provider) for i in reservation["Instances"]]
    return found


def describe_one(session: AwsSession, instance_id: str, provider: str) -> Instance | None:
    try:
        reservations = session.call("ec2", "describe_instances", InstanceIds=[instance_id])["Reservations"]
    except NotFoundError:
        return None
    for reservation in reservations:
        for data in reservation["Instances"]:
            return instance_from_api(data, session.region, provider)
    return None


def wait_state(session: AwsSession, instance_id: str, provider: str, wanted: set[str], timeout: float,
               interval: float = 2.0) -> Instance | None:
    """Poll every ``interval`` s until the instance is in one of ``wanted`` (None: it vanished)."""
    deadline = time.monotonic() + timeout
    while True:
        instance = describe_one(session, instance_id, provider)
        if instance is None or instance.state in wanted:
            return instance
        if instance.state == "terminated" and "terminated" not in wanted:
            raise RemoteError(f"instance {instance_id} was terminated while waiting for {'/'.join(sorted(wanted))}",
                              "for spot instances this means no capacity or an interruption; retry `nbcloud up`")
        if time.monotonic() > deadline:
            raise RemoteError(f"instance {instance_id} still {instance.state} after {timeout:g} s",
                              "`nbcloud status` shows it; retry later")
        time.sleep(interval)
