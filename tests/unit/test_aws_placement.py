"""Issue 18: the failover plan and the error classes that trigger it (pure functions)."""

from __future__ import annotations

from nbcloud.errors import CapacityError
from nbcloud.providers.aws.placement import failover_kind, plan, quota_bucket, summarize


def test_plan_tries_each_offering_zone_then_each_fallback_type() -> None:
    zones = {"g5.xlarge": ["us-east-1a", "us-east-1b"], "g6.xlarge": ["us-east-1b"]}
    assert plan(["g5.xlarge", "g6.xlarge"], zones, None) == [
        ("g5.xlarge", "us-east-1a"), ("g5.xlarge", "us-east-1b"), ("g6.xlarge", "us-east-1b")]


def test_a_pinned_zone_is_kept_and_types_not_offered_there_are_skipped() -> None:
    zones = {"g5.xlarge": ["us-east-1a", "us-east-1b"], "g6.xlarge": ["us-east-1b"]}
    assert plan(["g5.xlarge", "g6.xlarge"], zones, "us-east-1a") == [("g5.xlarge", "us-east-1a")]


def test_without_offerings_ec2_chooses() -> None:
    assert plan(["t3.medium"], {}, None) == [("t3.medium", None)]
    assert plan(["t3.medium"], {"t3.medium": []}, None) == [], "offered nowhere: nothing to try"


def test_what_triggers_failover() -> None:
    assert failover_kind("InsufficientInstanceCapacity", "") == "zone"
    assert failover_kind("Unsupported", "") == "zone"
    assert failover_kind("InvalidParameterValue", "Your requested instance type (g5.xlarge) is not supported in "
                         "your requested Availability Zone (us-east-1e).") == "zone"
    assert failover_kind("MissingInput", "No default subnet for availability zone: 'us-east-1e'.") == "zone"
    assert failover_kind("InvalidParameterValue", "Invalid value for InstanceType") is None
    assert failover_kind("VcpuLimitExceeded", "") == "quota"
    assert failover_kind("AuthFailure", "") is None


def test_quota_buckets_follow_ec2s_vcpu_quotas() -> None:
    assert quota_bucket("t3.medium") == quota_bucket("m5.large") == quota_bucket("c7i.xlarge") == "standard"
    assert quota_bucket("g5.xlarge") == quota_bucket("g6.xlarge") == quota_bucket("vt1.3xlarge") == "g"
    assert quota_bucket("p4d.24xlarge") == "p"
    assert quota_bucket("inf2.xlarge") == "inf"
    assert quota_bucket("trn1.2xlarge") == "trn"


def test_no_capacity_is_a_cloud_failure_exit_1_and_hints_no_zone_flag() -> None:
    error = CapacityError("no room")
    assert error.exit_code == 1
    assert "--zone" not in error.hint and "--fallback-types" in error.hint


def test_what_was_tried_fits_one_line() -> None:
    tried = [("g5.xlarge", "us-east-1a", "InsufficientInstanceCapacity"),
             ("g5.xlarge", "us-east-1b", "InsufficientInstanceCapacity"),
             ("g6.xlarge", "us-east-1a", "VcpuLimitExceeded")]
    assert summarize(tried) == ("g5.xlarge in us-east-1a, us-east-1b (InsufficientInstanceCapacity); "
                                "g6.xlarge in us-east-1a (VcpuLimitExceeded)")


def test_sandbox_faults_speak_as_ec2_so_failover_reads_them() -> None:
    """The sandbox's injected capacity errors carry EC2's wording (zone and type filled in): the product's failover
    classifies them exactly as it would AWS's own answers."""
    from nbcloud.sandbox.cloud import fault_message

    call = {"Action": ["RunInstances"], "InstanceType": ["t3.medium"], "Placement.AvailabilityZone": ["us-east-1a"]}
    for code in ("InsufficientInstanceCapacity", "Unsupported", "InvalidParameterValue"):
        message = fault_message("RunInstances", code, call)
        assert "t3.medium" in message and "us-east-1a" in message and "sandbox fault-api" in message
        assert failover_kind(code, message) == "zone", code
    assert failover_kind("VcpuLimitExceeded", fault_message("RunInstances", "VcpuLimitExceeded", call)) == "quota"
    assert fault_message("DescribeInstances", "AuthFailure", {}) == (
        "injected by `nbcloud sandbox fault-api DescribeInstances AuthFailure`")


def test_a_zone_that_offers_none_of_the_types_is_bad_input_naming_the_zones_that_do() -> None:
    """Found from outside: `up x --zone us-east-1z` (a typo) failed with exit 1, 't3.medium: not offered in any zone of
    us-east-1', though every other zone offers it."""
    from nbcloud.errors import UsageError
    from nbcloud.providers.aws.placement import nothing_to_try

    error = nothing_to_try(["t3.medium"], {"t3.medium": ["us-east-1a", "us-east-1b"]}, "us-east-1z", "us-east-1")
    assert isinstance(error, UsageError) and error.exit_code == 2
    assert error.message == "t3.medium is not offered in zone us-east-1z"
    assert "us-east-1a, us-east-1b" in error.hint and "--zone" in error.hint
    nowhere = nothing_to_try(["p9.huge"], {"p9.huge": []}, None, "us-east-1")
    assert isinstance(nowhere, CapacityError) and nowhere.message == "p9.huge: not offered in any zone of us-east-1"
    pinned_nowhere = nothing_to_try(["p9.huge"], {"p9.huge": []}, "us-east-1a", "us-east-1")
    assert isinstance(pinned_nowhere, CapacityError), "offered nowhere: the zone is not the problem"
