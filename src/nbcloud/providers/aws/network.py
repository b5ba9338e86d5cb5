"""Security groups that admit the caller's address alone, and finding that address."""

from __future__ import annotations

import contextlib
import ipaddress
import urllib.request
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ...errors import NotFoundError, RemoteError, UsageError
from ..base import IngressRule
from .session import tags_list

if TYPE_CHECKING:
    from .session import AwsSession

__all__ = ["caller_ip", "create_security_group", "delete_security_group", "set_ingress"]

CHECKIP_URL = "https://checkip.amazonaws.com"


def caller_ip(url: str = CHECKIP_URL) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode().strip()
        return str(ipaddress.ip_address(text))
    except (OSError, ValueError) as exc:
        raise RemoteError(f"cannot find your public IP address from {url}: {exc}",
                          "pass --allow-cidr YOUR.IP.ADDR.ESS/32") from exc


def _permissions(rules: Sequence[IngressRule]) -> list[dict[str, object]]:
    return [{"IpProtocol": "tcp", "FromPort": r.port, "ToPort": r.port,
             "IpRanges": [{"CidrIp": r.cidr, "Description": r.description or "nbcloud"}]} for r in rules]


def create_security_group(session: AwsSession, group_name: str, rules: Sequence[IngressRule],
                          tags: dict[str, str]) -> str:
    vpcs = session.call("ec2", "describe_vpcs", Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise UsageError(f"no default VPC in {session.region}", "create one with `aws ec2 create-default-vpc`")
    group_id = session.call(
        "ec2", "create_security_group", GroupName=group_name, VpcId=vpcs[0]["VpcId"],
        Description="nbcloud: SSH from the owner's address only",
        TagSpecifications=[{"ResourceType": "security-group", "Tags": tags_list(tags)}],
    )["GroupId"]
    if rules:
        session.call("ec2", "authorize_security_group_ingress", GroupId=group_id, IpPermissions=_permissions(rules))
    return group_id


def set_ingress(session: AwsSession, group_id: str, rules: Sequence[IngressRule]) -> bool:
    """Make the group's inbound rules exactly ``rules``; returns True when something changed."""
    group = session.call("ec2", "describe_security_groups", GroupIds=[group_id])["SecurityGroups"][0]
    current = {(p.get("FromPort"), r["CidrIp"]) for p in group.get("IpPermissions", []) for r in p.get("IpRanges", [])}
    wanted = {(r.port, r.cidr) for r in rules}
    if current == wanted:
        return False
    if group.get("IpPermissions"):
        session.call("ec2", "revoke_security_group_ingress", GroupId=group_id, IpPermissions=group["IpPermissions"])
    if rules:
        session.call("ec2", "authorize_security_group_ingress", GroupId=group_id, IpPermissions=_permissions(rules))
    return True


def delete_security_group(session: AwsSession, group_id: str) -> None:
    with contextlib.suppress(NotFoundError):  # already gone is what we wanted
        session.call("ec2", "delete_security_group", GroupId=group_id)
