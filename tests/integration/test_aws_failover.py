"""Issue 18 on the sandbox: `up` fails over across zones and `--fallback-types` when EC2 has no capacity or quota,
and says each attempt; when everything fails, one line, exit 1, nothing left in the cloud."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from nbcloud.models import InstanceSpec

pytestmark = [pytest.mark.sandbox]


def _offered(world: Any, itype: str = "t3.medium") -> list[str]:
    offers = world.ec2().describe_instance_type_offerings(
        LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": [itype]}])
    return sorted(o["Location"] for o in offers["InstanceTypeOfferings"])


@pytest.fixture
def faults(world: Any) -> Iterator[list[tuple[str, str | None]]]:
    """Faults a test sets (operation, zone): cleared at the end, also when it fails."""
    from nbcloud.sandbox import client as sandbox

    made: list[tuple[str, str | None]] = []
    yield made
    for operation, zone in made:
        sandbox.fault_api(operation, "x", count=0, sandbox_dir=world.sandbox.sandbox_dir, zone=zone)


def _up(world: Any, name: str, **spec: Any) -> tuple[Any, list[str]]:
    from nbcloud import ops

    world.names.add(name)
    said: list[str] = []
    result = ops.up(ops.Context.create(), InstanceSpec(name=name, **spec), provider_name="sandbox",
                    progress=said.append, wait_jupyter=False, ssh_timeout=120)
    return result, said


def test_no_capacity_in_one_zone_lands_in_another_and_says_so(world: Any, faults: list[Any]) -> None:
    first = _offered(world)[0]
    world.nb("sandbox", "fault-api", "RunInstances", "InsufficientInstanceCapacity", "--count", "5",
             "--zone", first)
    faults.append(("RunInstances", first))
    result, said = _up(world, "fz")
    instance = world.ec2().describe_instances(InstanceIds=[result.instance_id])["Reservations"][0]["Instances"][0]
    landed = instance["Placement"]["AvailabilityZone"]
    assert landed != first
    assert any(f"no capacity for t3.medium in {first}" in s for s in said), said
    assert any(f"trying t3.medium in {landed}" in s for s in said), said
    assert world.ssh_out("fz", "whoami").strip() == "ubuntu"

    # a machine that has only used the sandbox lists the sandbox's resources, with no AWS set up at all
    bare = {k: v for k, v in world.env.items() if not k.startswith("AWS_") and k != "NBCLOUD_PROVIDER"}
    for args in (["volumes"], ["image", "list"], ["doctor", "--orphans"], ["list"]):
        done = world.__class__(world.home, world.user_ssh_config, world.sandbox, bare).nb(*args, check=False)
        assert done.returncode == 0, (args, done.stderr)
        assert "region" not in done.stderr


@pytest.mark.parametrize("code", ["Unsupported", "InvalidParameterValue"])
def test_a_type_not_offered_in_one_zone_lands_in_another(world: Any, faults: list[Any], code: str) -> None:
    """EC2's answers for a type a zone does not offer (the sandbox words them as EC2 does): the next zone is tried."""
    first = _offered(world)[0]
    world.nb("sandbox", "fault-api", "RunInstances", code, "--zone", first)
    faults.append(("RunInstances", first))
    name = f"nz{code[:3].lower()}"
    result, said = _up(world, name)
    instance = world.ec2().describe_instances(InstanceIds=[result.instance_id])["Reservations"][0]["Instances"][0]
    assert instance["Placement"]["AvailabilityZone"] != first
    assert any(f"no capacity for t3.medium in {first}: {code}" in s for s in said), said


def test_every_zone_without_capacity_fails_in_one_line_leaving_nothing(world: Any, faults: list[Any]) -> None:
    from nbcloud.sandbox import client as sandbox

    zones = _offered(world)
    for zone in zones:
        sandbox.fault_api("RunInstances", "InsufficientInstanceCapacity", count=5,
                          sandbox_dir=world.sandbox.sandbox_dir, zone=zone)
        faults.append(("RunInstances", zone))
    world.names.add("full")
    done = world.nb("up", "full", "--provider", "sandbox", "--no-connect", check=False, timeout=300)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert all(zone in lines[0] for zone in zones), lines[0]
    assert world.tagged("full") == []
    ec2 = world.ec2()
    assert [k for k in ec2.describe_key_pairs()["KeyPairs"] if k["KeyName"].startswith("nbcloud-full-")] == []
    assert [g for g in ec2.describe_security_groups()["SecurityGroups"]
            if g["GroupName"].startswith("nbcloud-full-")] == []
    tagged = ec2.describe_instances(Filters=[{"Name": "tag:nbcloud:name", "Values": ["full"]}])["Reservations"]
    assert [i for r in tagged for i in r["Instances"] if i["State"]["Name"] != "terminated"] == []
    assert ec2.describe_volumes(Filters=[{"Name": "tag:nbcloud:name", "Values": ["full"]}])["Volumes"] == []
    # nor on this machine: `nbcloud list` does not show it, no key or Host block was kept for it
    assert "full" not in [row["name"] for row in world.nb_json("list", "--provider", "sandbox")]
    from nbcloud.config import paths

    here = paths()
    assert not list(here.keys_dir.glob("full*"))
    assert "nb-full" not in (here.ssh_config.read_text() if here.ssh_config.exists() else "")


def test_all_refused_with_fallback_types_names_both_and_rolls_back_at_once(world: Any, faults: list[Any]) -> None:
    """Every (type, zone) refused: the error names each type and zone tried; EC2 answered every call, so the rollback
    does not wait for an instance that a lost answer might have made."""
    from nbcloud.errors import CapacityError
    from nbcloud.sandbox import client as sandbox

    zones = sorted(set(_offered(world)) | set(_offered(world, "m5.large")))
    for zone in zones:
        sandbox.fault_api("RunInstances", "InsufficientInstanceCapacity", count=20,
                          sandbox_dir=world.sandbox.sandbox_dir, zone=zone)
        faults.append(("RunInstances", zone))
    from nbcloud import ops

    world.names.add("full2")
    said: list[str] = []
    with pytest.raises(CapacityError) as refused:
        ops.up(ops.Context.create(), InstanceSpec(name="full2", fallback_types=("m5.large",)),
               provider_name="sandbox", progress=said.append, wait_jupyter=False, ssh_timeout=120)
    message = refused.value.one_line()
    assert "t3.medium in " in message and "m5.large in " in message, message
    assert all(zone in message for zone in _offered(world, "m5.large")), message
    assert world.tagged("full2") == []
    assert not any("checking whether launch" in s for s in said), said


def test_vcpu_quota_tries_another_family_not_another_zone(world: Any, faults: list[Any]) -> None:
    from nbcloud.sandbox import client as sandbox

    sandbox.fault_api("RunInstances", "VcpuLimitExceeded", count=1, sandbox_dir=world.sandbox.sandbox_dir)
    faults.append(("RunInstances", None))
    result, said = _up(world, "quota", fallback_types=("m5.large", "g5.xlarge"))
    assert result.instance_type == "g5.xlarge"
    assert any("no quota for t3.medium" in s for s in said), said
    assert not any("trying t3.medium" in s or "m5.large" in s for s in said), said  # same quota: not tried
    assert world.status("quota")["instance_type"] == "g5.xlarge", "the store records the type launched"
