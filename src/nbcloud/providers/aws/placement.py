"""Where an instance can be launched: zones that offer its type, and failover when EC2 has no capacity.

Order of attempts: the asked type in every zone that offers it (the asked zone only, when the user or a data volume
pins one), then each ``--fallback-types`` type the same way. A quota refusal (vCPU limit) skips the other zones of
its quota bucket's types: quotas are per region and family group, so only another family can help. The decisions
(:func:`plan`, :func:`failover_kind`, :func:`quota_bucket`) are pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from ...errors import CapacityError, NbcloudError, QuotaError, UsageError
from .session import aws_errors

if TYPE_CHECKING:
    from ...models import Instance
    from ..base import LaunchRequest
    from .session import AwsSession

__all__ = ["failover_kind", "nothing_to_try", "offered_zones", "plan", "quota_bucket", "run_with_failover",
           "summarize"]

_ZONE_CODES = {"InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientHostCapacity", "Unsupported",
               "SpotMaxPriceTooLow"}
_QUOTA_CODES = {"VcpuLimitExceeded", "MaxSpotInstanceCountExceeded"}
# a type a zone does not offer, or a zone where the default VPC has no default subnet: another zone may do
_NOT_IN_ZONE = re.compile(r"not supported in (your requested|the requested|this) availability zone|"
                          r"no default subnet for availability zone", re.I)
# EC2's vCPU quotas group families: "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances", "… G and VT
# …", "… P …", and so on. Two types in one group share one quota.
_STANDARD = set("acdhimrtz")


def quota_bucket(instance_type: str) -> str:
    family = instance_type.split(".", 1)[0].lower()
    letters = re.match(r"[a-z]+", family)
    prefix = letters.group(0) if letters else family
    for multi in ("inf", "trn", "dl", "vt", "hpc", "mac", "u"):
        if prefix.startswith(multi) and (multi != "u" or family.startswith("u-")):
            return "g" if multi == "vt" else multi
    return "standard" if prefix[0] in _STANDARD else prefix[0]


def failover_kind(code: str, message: str) -> Literal["zone", "quota"] | None:
    """``zone``: another zone (or type) may work; ``quota``: only another family can; None: no failover."""
    if code in _ZONE_CODES or (code in ("InvalidParameterValue", "MissingInput") and _NOT_IN_ZONE.search(message)):
        return "zone"
    if code in _QUOTA_CODES:
        return "quota"
    return None


def plan(types: Sequence[str], zones_for: dict[str, list[str]],
         pinned_zone: str | None) -> list[tuple[str, str | None]]:
    """Every (type, zone) to try, in order. ``None`` as a zone lets EC2 choose (its offerings were not listed)."""
    attempts: list[tuple[str, str | None]] = []
    for itype in dict.fromkeys(types):
        offered = zones_for.get(itype)
        if pinned_zone:
            if offered is None or pinned_zone in offered:
                attempts.append((itype, pinned_zone))
        elif offered:
            attempts += [(itype, zone) for zone in offered]
        elif offered is None:
            attempts.append((itype, None))
    return attempts


def offered_zones(session: AwsSession, instance_types: Sequence[str]) -> dict[str, list[str]]:
    """``{type: [zones offering it, sorted]}`` from one DescribeInstanceTypeOfferings (types offered nowhere map to
    an empty list); ``{}`` when the call is refused (EC2 then chooses a zone, as before)."""
    found: dict[str, list[str]] = {t: [] for t in instance_types}
    try:
        for page in session.paginate("ec2", "describe_instance_type_offerings", LocationType="availability-zone",
                                     Filters=[{"Name": "instance-type", "Values": list(instance_types)}]):
            for offer in page["InstanceTypeOfferings"]:
                found.setdefault(offer["InstanceType"], []).append(offer["Location"])
    except NbcloudError:  # e.g. a policy without ec2:DescribeInstanceTypeOfferings: launch without failover
        return {}
    return {t: sorted(zones) for t, zones in found.items()}


def nothing_to_try(types: Sequence[str], zones_for: dict[str, list[str]], pinned_zone: str | None,
                   region: str) -> NbcloudError:
    """Why :func:`plan` found nothing. A ``--zone`` that offers none of the types while other zones do is the
    user's input (a typo, or a zone without that type): exit 2 naming the zones that would work; types offered
    nowhere in the region are the cloud's answer (exit 1), as before."""
    elsewhere = sorted({zone for itype in types for zone in zones_for.get(itype) or []})
    if pinned_zone and elsewhere:
        return UsageError(f"{', '.join(dict.fromkeys(types))} is not offered in zone {pinned_zone}",
                          f"offered in {', '.join(elsewhere)}: pick one with --zone, or leave --zone out")
    return CapacityError(f"{', '.join(types)}: not offered in any zone of {region}",
                         "pick another type (`--instance-type`) or region (`--region`)")


def _describe(attempt: tuple[str, str | None]) -> str:
    return f"{attempt[0]} in {attempt[1] or 'a zone EC2 chose'}"


def run_with_failover(session: AwsSession, request: LaunchRequest,
                      launch: Callable[[LaunchRequest], Instance],
                      fallback_types: Sequence[str] = (),
                      progress: Callable[[str], None] | None = None) -> Instance:
    """Launch through ``launch`` (one raw RunInstances: botocore's errors) trying each (type, zone) in turn."""
    import botocore.exceptions as bx

    say = progress or (lambda _message: None)
    types = [request.instance_type, *fallback_types]
    zones_for = offered_zones(session, types)
    attempts = plan(types, zones_for, request.zone)
    if not attempts:
        raise nothing_to_try(types, zones_for, request.zone, session.region)
    tried: list[tuple[str, str, str]] = []  # (type, zone, error code)
    skipped_buckets: set[str] = set()
    last_quota: Any = None
    for number, attempt in enumerate(attempts):
        itype, zone = attempt
        if quota_bucket(itype) in skipped_buckets:
            continue
        if tried:
            say(f"trying {_describe(attempt)} ({len(tried)} attempt(s) failed)")
        launch_id = request.launch_id if number == 0 else f"{request.launch_id}-{number}"  # a token per attempt
        with aws_errors("RunInstances", session.profile):  # what is not failed over is reported as ever
            try:
                return launch(replace(request, instance_type=itype, zone=zone, launch_id=launch_id))
            except bx.ClientError as exc:
                error = exc.response.get("Error", {})
                code, message = str(error.get("Code", "")), str(error.get("Message", ""))
                kind = failover_kind(code, message)
                if kind is None:
                    raise
                if kind == "quota":
                    last_quota = exc
            tried.append((itype, zone or "a zone EC2 chose", code))
            say(f"no {'quota' if kind == 'quota' else 'capacity'} for {_describe(attempt)}: {code}")
            if kind == "quota":
                skipped_buckets.add(quota_bucket(itype))
    summary = f"no instance could be launched: tried {summarize(tried)}"
    if last_quota is not None and all(code in _QUOTA_CODES for _, _, code in tried):
        raise QuotaError(summary, "raise the vCPU quota (Service Quotas → Amazon EC2), or add "
                                  "`--fallback-types` of another family") from last_quota
    more = "more types to `--fallback-types`" if fallback_types else "`--fallback-types T1,T2`"
    raise CapacityError(summary, f"retry in a few minutes, or add {more}"
                                 + (", or `--spot-fallback` for on-demand" if request.spot else ""))


def summarize(tried: Sequence[tuple[str, str, str]]) -> str:
    """'g5.xlarge in us-east-1a, us-east-1b (InsufficientInstanceCapacity); g6.xlarge in …': one line, grouped."""
    groups: list[tuple[str, str, list[str]]] = []
    for itype, zone, code in tried:
        if groups and groups[-1][0] == itype and groups[-1][1] == code:
            groups[-1][2].append(zone)
        else:
            groups.append((itype, code, [zone]))
    return "; ".join(f"{itype} in {', '.join(zones)} ({code})" for itype, code, zones in groups)
