"""Issue 18: what the AWS console shows (Name tags), how often `up` polls EC2, which cloud a listing asks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws

from nbcloud.models import NAME_TAG
from nbcloud.providers.aws.provider import AwsProvider
from nbcloud.providers.aws.session import AwsSession
from nbcloud.providers.base import IngressRule, LaunchRequest
from nbcloud.providers.registry import listing_provider


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsProvider]:
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with mock_aws():
        yield AwsProvider(AwsSession.create(region="us-east-1", access_key="testing", secret_key="testing"))


def _names(ec2: Any, resource_id: str) -> list[str]:
    tags = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [resource_id]}])["Tags"]
    return [t["Value"] for t in tags if t["Key"] == "Name"]


def test_everything_up_makes_carries_a_console_name(aws: AwsProvider) -> None:
    ec2 = aws.session.client("ec2")
    tags = {NAME_TAG: "demo", "nbcloud:launch": "l1"}
    aws.import_key_pair("nbcloud-demo-l1", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBzm1v0Gm2QnM3yJbq3S4wJ6g0lS3mPq7"
                        "0bH3ZJtR9Yd x", tags)
    key_id = ec2.describe_key_pairs(KeyNames=["nbcloud-demo-l1"])["KeyPairs"][0]["KeyPairId"]
    group_id = aws.create_security_group("nbcloud-demo-l1", [IngressRule(22, "203.0.113.7/32")], tags)
    image_id = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance = aws.run_instance(LaunchRequest(
        name="demo", launch_id="l1", instance_type="t3.medium", image_id=image_id, key_name="nbcloud-demo-l1",
        security_group_id=group_id, user_data=b"", disk_gb=8, zone="us-east-1b", tags=tags))
    volume = aws.create_volume(1, "us-east-1b", tags)
    for resource_id in (key_id, group_id, instance.instance_id, volume.volume_id, *instance.volume_ids):
        assert _names(ec2, resource_id) == ["nbcloud-demo"], resource_id
    # a user's own Name (`--tag Name=...`) wins
    mine = aws.create_volume(1, "us-east-1b", tags | {"Name": "my disk"})
    assert _names(ec2, mine.volume_id) == ["my disk"]


def test_real_aws_is_polled_at_a_waiters_pace_the_sandbox_fast(aws: AwsProvider,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from nbcloud.providers.aws import instances
    from nbcloud.providers.sandbox.provider import SandboxProvider

    slept: list[float] = []
    states = iter(["pending", "pending", "running"])
    real_describe = instances.describe_one

    def describe(session: Any, instance_id: str, provider: str) -> Any:
        from dataclasses import replace

        found = real_describe(session, instance_id, provider)
        return replace(found, state=next(states))

    ec2 = aws.session.client("ec2")
    image_id = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    made = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    monkeypatch.setattr(instances, "describe_one", describe)
    monkeypatch.setattr(instances.time, "sleep", slept.append)
    assert aws.wait_running(made, timeout=600).state == "running"
    assert slept and min(slept) >= 2, slept
    assert len(slept) == 2
    assert SandboxProvider.poll_interval < 1 <= 2 <= AwsProvider.poll_interval


def test_listings_ask_the_cloud_this_machine_used() -> None:
    assert listing_provider(None, ["sandbox", "sandbox"], "aws") == "sandbox"
    assert listing_provider(None, ["sandbox", "ssh"], "aws") == "sandbox", "an adopted host is no cloud to list"
    assert listing_provider(None, [], "aws") == "aws"
    assert listing_provider(None, ["sandbox", "aws"], "aws") == "aws"
    assert listing_provider("aws", ["sandbox"], "aws") == "aws", "what the user configured wins"


def test_after_the_last_down_listings_still_ask_the_cloud_this_machine_used(nbcloud_home) -> None:
    """No instance left: the launches this machine remembers name the cloud (it asked AWS, "no AWS credentials",
    after the last `down` on the sandbox)."""
    from nbcloud.ops.context import Context
    from nbcloud.state import LaunchIntent

    ctx = Context.create()
    assert not ctx.store.all()
    assert ctx.listing_cloud() == ctx.settings.provider  # nothing known: the default
    ctx.store.begin_launch(LaunchIntent(launch_id="l-1", name="gone", provider="sandbox", region="us-east-1"))
    ctx.store.mark_launch("l-1", outcome="done")
    assert ctx.listing_cloud() == "sandbox"
