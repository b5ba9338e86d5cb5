"""boto3 session, clients with retries, and the mapping of AWS errors to nbcloud's error tree.

Throttling is retried by botocore's adaptive mode; capacity, quota, auth and bad-input errors fail fast with a
one-line hint. :func:`classify` is pure so it is unit-tested without a network.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ...errors import (
    CapacityError,
    ConflictError,
    CredentialsError,
    NbcloudError,
    NotFoundError,
    QuotaError,
    RemoteError,
    UsageError,
)
from ...models import NAME_TAG

CONSOLE_NAME_TAG = "Name"

__all__ = ["AwsSession", "aws_errors", "choose_region", "classify", "sso_login_hint"]

_CREDENTIAL_CODES = {"AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "SignatureDoesNotMatch",
                     "ExpiredToken", "ExpiredTokenException", "UnrecognizedClientException", "AccessDenied",
                     "AccessDeniedException", "OptInRequired"}
_CAPACITY_CODES = {"InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientHostCapacity",
                   "InsufficientReservedInstanceCapacity", "SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded",
                   "InsufficientFreeAddressesInSubnet", "Unsupported"}
_QUOTA_CODES = {"VcpuLimitExceeded", "InstanceLimitExceeded", "ResourceLimitExceeded", "VolumeLimitExceeded",
                "RulesPerSecurityGroupLimitExceeded", "SecurityGroupLimitExceeded", "MaxIOPSLimitExceeded",
                "AddressLimitExceeded", "KeyPairLimitExceeded"}
_NOT_FOUND_SUFFIXES = (".NotFound", ".Malformed")
_THROTTLE_CODES = {"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
                   "RequestThrottled", "ServiceUnavailable", "InternalError", "Unavailable"}


def classify(code: str, message: str, action: str = "") -> NbcloudError:
    """Map an AWS error code to an nbcloud error with the fix in its hint."""
    where = f" ({action})" if action else ""
    if code in _CREDENTIAL_CODES:
        if code in {"UnauthorizedOperation", "AccessDenied", "AccessDeniedException"}:
            return CredentialsError(f"AWS refused {action or 'the request'}: not authorised",
                                    "give your IAM user/role the EC2 permissions nbcloud needs (see the README) "
                                    "or use another `--profile`")
        return CredentialsError(f"AWS rejected the credentials{where}: {code}")
    if code in _CAPACITY_CODES:
        return CapacityError(f"AWS has no capacity for this request{where}: {message}")
    if code in _QUOTA_CODES:
        hint = None
        if code == "VcpuLimitExceeded":
            hint = ("your vCPU quota for this instance family is too low; raise it in Service Quotas → Amazon EC2 → "
                    "'Running On-Demand … instances' (or 'All … Spot Instance Requests' for spot), or pick a smaller "
                    "type")
        return QuotaError(f"AWS quota reached{where}: {message}", hint)
    if code.endswith(_NOT_FOUND_SUFFIXES) or code in {"InvalidAMIID.Unavailable", "InvalidParameterValue",
                                                       "InvalidParameterCombination", "InvalidInstanceType",
                                                       "ParameterNotFound", "MissingParameter"}:
        if code.startswith("InvalidAMIID") or code == "ParameterNotFound":
            return UsageError(f"image not found{where}: {message}",
                              "use `--image ubuntu`, `--image dlami`, or an AMI id that exists in this region")
        if code.endswith(".NotFound"):
            return NotFoundError(f"{message}{where}")
        return UsageError(f"AWS rejected the request{where}: {message}")
    if code in {"IncorrectInstanceState", "IncorrectState", "InvalidGroup.Duplicate", "InvalidKeyPair.Duplicate",
                "DependencyViolation", "VolumeInUse", "InvalidVolume.ZoneMismatch"}:
        return ConflictError(f"{message}{where}", "wait a moment and retry; `nbcloud status` shows the current state")
    if code in _THROTTLE_CODES:
        return RemoteError(f"AWS is throttling or unavailable{where}: {code}", "retry in a minute")
    return RemoteError(f"AWS error {code}{where}: {message}", "retry; if it persists, run with --debug")


def sso_login_hint(profile: str | None) -> str:
    """The command that starts an SSO session for ``profile`` (no ``--profile`` for the default one)."""
    if not profile or profile == "default":
        return "run `aws sso login`"
    return f"run `aws sso login --profile {profile}`"


def _profile_not_found(exc: Exception, asked: str | None) -> CredentialsError:
    """botocore knows the name even when it came from AWS_PROFILE, where nbcloud's own argument is None."""
    name = getattr(exc, "kwargs", {}).get("profile") or asked or os.environ.get("AWS_PROFILE")
    return CredentialsError(f"AWS profile {name!r} not found",
                            "list profiles with `aws configure list-profiles`, or unset AWS_PROFILE")


def choose_region(flag: str | None, environ: Mapping[str, str],
                  profile_region: str | None) -> str | None:
    """The AWS SDKs' order: the flag, AWS_REGION, AWS_DEFAULT_REGION, then the profile's ``region``."""
    return (flag or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or profile_region) or None


@contextmanager
def aws_errors(action: str = "", profile: str | None = None) -> Iterator[None]:
    """Translate botocore's exceptions raised inside the block into nbcloud errors.

    ``profile``: the session's profile, so a hint names the command to run rather than a placeholder.
    """
    import botocore.exceptions as bx

    try:
        yield
    except bx.ClientError as exc:
        error = exc.response.get("Error", {})
        raise classify(str(error.get("Code", "Unknown")), str(error.get("Message", "")).strip(),
                       action or exc.operation_name) from exc
    except (bx.NoCredentialsError, bx.PartialCredentialsError) as exc:
        raise CredentialsError("no AWS credentials found") from exc
    except (bx.SSOTokenLoadError, bx.UnauthorizedSSOTokenError, bx.TokenRetrievalError) as exc:
        raise CredentialsError("the AWS SSO session has expired or was never started",
                               sso_login_hint(profile)) from exc
    except bx.ProfileNotFound as exc:
        raise _profile_not_found(exc, profile) from exc
    except bx.EndpointConnectionError as exc:
        raise RemoteError(f"cannot reach the AWS API: {exc}", "check the network or the region name") from exc


@dataclass
class AwsSession:
    """One boto3 session (profile + region), handing out retrying clients."""

    boto: Any
    region: str
    endpoint_url: str | None = None
    _clients: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, *, region: str | None = None, profile: str | None = None, endpoint_url: str | None = None,
               access_key: str | None = None, secret_key: str | None = None) -> AwsSession:
        import boto3
        import botocore.exceptions as bx

        try:
            if access_key:
                boto = boto3.Session(aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                                     region_name=region or "us-east-1")
            else:
                boto = boto3.Session(profile_name=profile)
            chosen = boto.region_name if access_key else choose_region(region, os.environ, boto.region_name)
        except bx.ProfileNotFound as exc:
            raise _profile_not_found(exc, profile) from exc
        if not chosen:
            raise _no_region(boto, profile)
        if endpoint_url is None or region:
            known = boto.get_available_regions("ec2")
            if known and chosen not in known:
                close = difflib.get_close_matches(chosen, known, n=1)
                raise UsageError(f"unknown AWS region {chosen!r}",
                                 f"did you mean {close[0]}?" if close else "see `aws ec2 describe-regions`")
        return cls(boto=boto, region=chosen, endpoint_url=endpoint_url)

    def client(self, service: str, region: str | None = None) -> Any:
        key = f"{service}@{region or self.region}"
        if key not in self._clients:
            from botocore.config import Config

            config = Config(retries={"mode": "adaptive", "max_attempts": int(os.environ.get("NBCLOUD_AWS_RETRIES", 8))},
                            connect_timeout=5, read_timeout=60)
            self._clients[key] = self.boto.client(service, region_name=region or self.region,
                                                  endpoint_url=self.endpoint_url, config=config)
        return self._clients[key]

    @property
    def profile(self) -> str | None:
        return getattr(self.boto, "profile_name", None)

    def call(self, service: str, method: str, **kwargs: Any) -> Any:
        with aws_errors(method, self.profile):
            return getattr(self.client(service), method)(**kwargs)

    def paginate(self, service: str, method: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        with aws_errors(method, self.profile):
            yield from self.client(service).get_paginator(method).paginate(**kwargs)


def _no_region(boto: Any, profile: str | None) -> NbcloudError:
    """No region anywhere: a new user most likely has no credentials either, and those come first."""
    try:
        with aws_errors("", profile):
            credentials = boto.get_credentials()
    except CredentialsError:
        credentials = None
    if credentials is None:
        return CredentialsError(
            "no AWS credentials and no region configured",
            "for AWS run `aws configure` (keys and region) or `aws configure sso`, then retry; to try nbcloud "
            "without an AWS account: `--provider sandbox`")
    return UsageError("no AWS region chosen",
                      "pass --region (e.g. us-east-1), set AWS_REGION, or add `region` to your AWS profile")


def tags_list(tags: dict[str, str]) -> list[dict[str, str]]:
    """EC2's tag list; anything tagged with an instance name also gets the ``Name`` the AWS console shows
    (``nbcloud-NAME``), unless the user gave one with ``--tag Name=…``."""
    if NAME_TAG in tags and CONSOLE_NAME_TAG not in tags:
        tags = {CONSOLE_NAME_TAG: f"nbcloud-{tags[NAME_TAG]}", **tags}
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def tags_dict(items: list[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in items or []}


Retryable = Callable[[], Any]
