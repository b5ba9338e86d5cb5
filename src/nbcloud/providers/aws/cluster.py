"""A cluster's cloud resources on EC2: its security group (members admit each other, nothing else) and its workers.

EC2 calls go through the provider's boto3 session (aws, and the sandbox that is the same code pointed at moto);
a provider without one (``ssh``: a machine nbcloud did not make) cannot grow a cluster. ops/ reaches this module
through ``providers.registry.cluster_machines`` (the :class:`~nbcloud.providers.base.ClusterMachines` interface).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from ...errors import NotFoundError, UsageError
from ...models import CLUSTER_TAG, LAUNCH_TAG, Instance
from ..base import WorkerRequest
from .instances import instance_from_api
from .session import tags_list

__all__ = ["cluster_groups", "create_cluster_group", "delete_group", "instance_groups", "list_workers", "run_worker",
           "set_instance_groups", "subnet_of", "terminate"]

LIVE = ("pending", "running", "stopping", "stopped", "shutting-down")


def _session(provider: Any) -> Any:
    session = getattr(provider, "session", None)
    if session is None:
        raise UsageError(f"the {provider.name} provider cannot launch cluster workers",
                         "clusters need a cloud provider: aws or sandbox")
    return session


def create_cluster_group(provider: Any, name: str, ports: Sequence[tuple[int, int]], tags: dict[str, str],
                         vpc_id: str | None) -> str:
    """A group whose members may reach each other on ``ports`` (and SSH, for the jump from the notebook's
    instance) and which admits nothing from anywhere else."""
    session = _session(provider)
    if vpc_id is None:
        vpcs = session.call("ec2", "describe_vpcs", Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
        vpc_id = vpcs[0]["VpcId"] if vpcs else None
    group_id = session.call(
        "ec2", "create_security_group", GroupName=f"nbcloud-{name}-cluster-{tags.get(LAUNCH_TAG, '')[:8]}",
        VpcId=vpc_id, Description="nbcloud cluster: members only",
        TagSpecifications=[{"ResourceType": "security-group", "Tags": tags_list(tags)}],
    )["GroupId"]
    permissions = [{"IpProtocol": "tcp", "FromPort": lo, "ToPort": hi,
                    "UserIdGroupPairs": [{"GroupId": group_id, "Description": "nbcloud cluster members"}]}
                   for lo, hi in [(22, 22), *ports]]
    try:
        session.call("ec2", "authorize_security_group_ingress", GroupId=group_id, IpPermissions=permissions)
    except BaseException:
        delete_group(provider, group_id)
        raise
    return group_id


def delete_group(provider: Any, group_id: str) -> None:
    with contextlib.suppress(NotFoundError):
        _session(provider).call("ec2", "delete_security_group", GroupId=group_id)


def instance_groups(provider: Any, instance_id: str) -> list[str]:
    data = _session(provider).call("ec2", "describe_instances", InstanceIds=[instance_id])
    inst = data["Reservations"][0]["Instances"][0]
    return [g["GroupId"] for g in inst.get("SecurityGroups", [])]


def set_instance_groups(provider: Any, instance_id: str, group_ids: Sequence[str]) -> None:
    _session(provider).call("ec2", "modify_instance_attribute", InstanceId=instance_id, Groups=list(group_ids))


def run_worker(provider: Any, request: WorkerRequest) -> Instance:
    params: dict[str, Any] = {
        "ImageId": request.image_id, "InstanceType": request.instance_type, "MinCount": 1, "MaxCount": 1,
        "KeyName": request.key_name, "SecurityGroupIds": [request.group_id], "UserData": request.user_data,
        "ClientToken": request.client_token,
        # the watchdog's power-off (no scheduler for a while) ends the worker: nothing is left to bill
        "InstanceInitiatedShutdownBehavior": "terminate",
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
        "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {
            "VolumeSize": request.disk_gb, "VolumeType": "gp3", "Encrypted": True, "DeleteOnTermination": True}}],
        "TagSpecifications": [{"ResourceType": "instance", "Tags": tags_list(request.tags)},
                              {"ResourceType": "volume", "Tags": tags_list(request.tags)}],
    }
    if request.zone:
        params["Placement"] = {"AvailabilityZone": request.zone}
    if request.subnet_id:
        params["SubnetId"] = request.subnet_id
    if request.spot:
        params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
            "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
    session = _session(provider)
    data = session.call("ec2", "run_instances", **params)["Instances"][0]
    return instance_from_api(data, session.region, provider.name)


def list_workers(provider: Any, name: str) -> list[Instance]:
    """Every live worker of the cluster, found by tag (the cloud is the truth, not the local file)."""
    session = _session(provider)
    filters = [{"Name": f"tag:{CLUSTER_TAG}", "Values": [name]},
               {"Name": "instance-state-name", "Values": list(LIVE)}]
    found = []
    for page in session.paginate("ec2", "describe_instances", Filters=filters):
        for reservation in page["Reservations"]:
            found += [instance_from_api(i, session.region, provider.name) for i in reservation["Instances"]]
    return sorted(found, key=lambda i: i.instance_id)


def subnet_of(provider: Any, instance_id: str) -> tuple[str | None, str | None]:
    data = _session(provider).call("ec2", "describe_instances", InstanceIds=[instance_id])
    inst = data["Reservations"][0]["Instances"][0]
    return inst.get("SubnetId"), inst.get("VpcId")


def terminate(provider: Any, instance_ids: Sequence[str]) -> None:
    if instance_ids:
        _session(provider).call("ec2", "terminate_instances", InstanceIds=list(instance_ids))


def cluster_groups(provider: Any, name: str) -> list[str]:
    """The security groups tagged as ``name``'s cluster's."""
    found = _session(provider).call("ec2", "describe_security_groups",
                                    Filters=[{"Name": f"tag:{CLUSTER_TAG}", "Values": [name]}])
    return [g["GroupId"] for g in found["SecurityGroups"]]
