"""The boto3 edge of pricing: live prices from the AWS Pricing API and EC2 spot price history.

Why it is separate from :mod:`nbcloud.money.pricing`: everything that quotes a price works from the table offline; only
``nbcloud prices refresh`` (and spot quotes) talk to AWS. The Pricing API lives in us-east-1 whatever region the
user launches in, and many IAM users lack ``pricing:GetProducts``: that failure says so and the shipped snapshot
keeps working meanwhile.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from ...config import write_private
from ...errors import CredentialsError, RemoteError, UsageError
from ...money.cost import latest_spot_price
from ...money.pricing import PriceTable, load_prices, merge_refresh, parse_ebs_product, parse_pricing_product

__all__ = ["PRICING_REGION", "fetch_ebs", "fetch_hourly", "fetch_on_demand", "fetch_spot", "pricing_errors",
           "refresh_prices"]

#: The Pricing API endpoint nbcloud uses (it also exists in ap-south-1 and eu-central-1; prices are global).
PRICING_REGION = "us-east-1"

_ACCESS_CODES = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"}
_BAD_CREDENTIAL_CODES = {"InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException",
                         "UnrecognizedClientException", "AuthFailure"}


@contextmanager
def pricing_errors(action: str) -> Iterator[None]:
    """Map botocore failures to nbcloud errors; a missing permission names the permission and the fallback."""
    import botocore.exceptions as bx

    try:
        yield
    except (bx.NoCredentialsError, bx.PartialCredentialsError) as exc:
        raise CredentialsError(f"no AWS credentials found ({action})") from exc
    except bx.ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = str(error.get("Code", "Unknown")), str(error.get("Message", "")).strip()
        if code in _ACCESS_CODES:
            permission = "pricing:GetProducts" if action == "GetProducts" else f"ec2:{action}"
            raise UsageError(
                f"AWS refused {action}: not authorised",
                f"allow `{permission}` for your IAM user/role to refresh prices; until then nbcloud quotes from the "
                "price snapshot it ships with (`nbcloud prices` shows its date)",
            ) from exc
        if code in _BAD_CREDENTIAL_CODES:
            raise CredentialsError(f"AWS rejected the credentials ({action}): {code}") from exc
        raise RemoteError(f"AWS {action} failed: {code}: {message}",
                          "retry later; the price snapshot stays in use") from exc
    except bx.EndpointConnectionError as exc:
        raise RemoteError(f"cannot reach the AWS Pricing API: {exc}",
                          "check the network; the price snapshot stays in use") from exc


def _pricing_client(session: Any) -> Any:
    # Positional region: works for boto3.Session.client(service, region_name) and AwsSession.client(service, region).
    return session.client("pricing", PRICING_REGION)


def _filters(**terms: str) -> list[dict[str, str]]:
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in terms.items()]


def _products(client: Any, service_code: str, filters: list[dict[str, str]]) -> Iterator[str]:
    with pricing_errors("GetProducts"):
        for page in client.get_paginator("get_products").paginate(
            ServiceCode=service_code, Filters=filters, FormatVersion="aws_v1"
        ):
            yield from page.get("PriceList", [])


def fetch_on_demand(
    session: Any, regions: Iterable[str], instance_types: Iterable[str] | None = None
) -> dict[str, dict[str, float]]:
    """``{region: {instance_type: hourly}}`` for Linux, shared tenancy, no pre-installed software, on-demand.

    With a handful of ``instance_types`` each is asked for by name (a few small calls); otherwise the whole region
    is paged through (~1,000 entries, 100 a page) and filtered locally. ``None`` keeps every type.
    """
    client = _pricing_client(session)
    wanted = None if instance_types is None else set(instance_types)
    out: dict[str, dict[str, float]] = {}
    base = {"operatingSystem": "Linux", "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}
    for region in regions:
        queries = (
            [_filters(**base, regionCode=region, instanceType=t) for t in sorted(wanted)]
            if wanted is not None and len(wanted) <= 5
            else [_filters(**base, regionCode=region)]
        )
        for filters in queries:
            for entry in _products(client, "AmazonEC2", filters):
                parsed = parse_pricing_product(entry)
                if parsed is None:
                    continue
                itype, reg, hourly = parsed
                if wanted is None or itype in wanted:
                    out.setdefault(reg, {})[itype] = hourly
    return out


def fetch_hourly(session: Any, instance_type: str, region: str) -> float | None:
    """One on-demand price from the Pricing API (GetProducts), or None when it cannot be had (no permission, no
    endpoint, e.g. the sandbox, or no such product). One attempt, short timeouts: `up` waits on it."""
    from botocore.config import Config

    config = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=3, read_timeout=10)
    try:
        client = session.boto.client("pricing", region_name=PRICING_REGION, endpoint_url=session.endpoint_url,
                                     config=config)
        found = fetch_on_demand(_OneClient(client), [region], [instance_type])
    except Exception:  # a refused or unserved API (nbcloud's errors, botocore's outside pricing_errors)
        return None
    return found.get(region, {}).get(instance_type)


class _OneClient:
    """A session stand-in that hands out one prepared client (``fetch_on_demand`` asks a session for it)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def client(self, _service: str, _region: str | None = None) -> Any:
        return self._client


def fetch_ebs(session: Any, regions: Iterable[str]) -> dict[str, Any]:
    """``{"ebs_gb_month": {region: {volume_type: $}}, "snapshot_gb_month": {region: $}}`` from the Pricing API."""
    client = _pricing_client(session)
    ebs: dict[str, dict[str, float]] = {}
    snapshots: dict[str, float] = {}
    for region in regions:
        for family in ("Storage", "Storage Snapshot"):
            for entry in _products(client, "AmazonEC2", _filters(regionCode=region, productFamily=family)):
                parsed = parse_ebs_product(entry)
                if parsed is None:
                    continue
                reg, kind, price = parsed
                if kind == "snapshot":
                    snapshots[reg] = price
                else:
                    ebs.setdefault(reg, {})[kind] = price
    return {"ebs_gb_month": ebs, "snapshot_gb_month": snapshots}


def fetch_spot(ec2_client: Any, instance_type: str, az: str | None = None) -> float | None:
    """The spot price in force now for Linux ``instance_type`` (in ``az``, or the highest across the region's
    zones); None when EC2 reports none (the type is not offered as spot there)."""
    kwargs: dict[str, Any] = {
        "InstanceTypes": [instance_type],
        "ProductDescriptions": ["Linux/UNIX"],
        "StartTime": datetime.now(UTC),
    }
    if az:
        kwargs["AvailabilityZone"] = az
    items: list[Mapping[str, Any]] = []
    with pricing_errors("DescribeSpotPriceHistory"):
        for page in ec2_client.get_paginator("describe_spot_price_history").paginate(**kwargs):
            items.extend(page.get("SpotPriceHistory", []))
    return latest_spot_price(items, instance_type, az)


def refresh_prices(
    session: Any,
    path: Path,
    regions: Iterable[str] | None = None,
    instance_types: Iterable[str] | None = None,
    base: PriceTable | None = None,
) -> PriceTable:
    """Fetch live prices, overlay them on ``base`` (default: the table in use now) and write the result to
    ``path`` atomically (0600, via ``write_private``) so a crash mid-write never leaves a torn table behind.

    Defaults: the regions and instance types the current table knows, so a refresh updates what nbcloud quotes.
    """
    table = base if base is not None else load_prices()
    region_list = list(regions) if regions is not None else table.regions()
    if instance_types is None:
        types: set[str] = set()
        for region in table.regions():
            types.update(table.instance_types(region))
        instance_types = types
    fetched: dict[str, Any] = {
        "as_of": date.today().isoformat(),
        "source": "AWS Pricing API (refreshed)",
        "notes": "Refreshed from the AWS Pricing API; prices it did not return keep their previous value.",
        "on_demand": fetch_on_demand(session, region_list, instance_types),
        **fetch_ebs(session, region_list),
    }
    merged = merge_refresh(table, fetched)
    write_private(Path(path), json.dumps(merged.to_dict(), indent=1) + "\n")
    return merged
