"""Which address nbcloud connects to: the public one; a private one only for a running instance without one."""

from __future__ import annotations

from typing import Any

from nbcloud.providers.aws.instances import instance_from_api, reach_address


def _api(state: str, **addresses: str) -> dict[str, Any]:
    return {"InstanceId": "i-1", "State": {"Name": state}, "InstanceType": "t3.medium", **addresses}


def test_the_public_address_is_the_one_to_reach_the_private_one_is_the_clusters() -> None:
    inst = instance_from_api(_api("running", PublicIpAddress="54.1.2.3", PrivateIpAddress="10.0.0.5"), "r", "aws")
    assert inst.host == "54.1.2.3" and inst.private_ip == "10.0.0.5"


def test_a_running_instance_without_a_public_address_is_reached_by_its_private_one() -> None:
    assert reach_address(_api("running", PrivateIpAddress="10.0.0.5")) == "10.0.0.5"


def test_a_stopped_instance_has_no_address_to_reach() -> None:
    # EC2 released its public address; the private one stays but is not where ssh will find it after a start
    stopped = instance_from_api(_api("stopped", PrivateIpAddress="10.0.0.5"), "r", "aws")
    assert stopped.host is None and stopped.private_ip == "10.0.0.5"
    assert reach_address(_api("pending", PrivateIpAddress="10.0.0.5")) is None
