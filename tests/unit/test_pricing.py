"""The price table, its loading rules, and the Pricing API parsers (recorded entries; moto has no Pricing API)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import NoCredentialsError
from botocore.stub import Stubber
from moto import mock_aws

from nbcloud.errors import CredentialsError, RemoteError, UsageError
from nbcloud.money.pricing import (
    PriceTable,
    load_prices,
    merge_refresh,
    parse_ebs_product,
    parse_pricing_product,
    user_prices_path,
)
from nbcloud.providers.aws import pricing as aws_pricing


@pytest.fixture(autouse=True)
def _private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBCLOUD_HOME", str(tmp_path / "home"))
    for var in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)


def _ec2_entry(**attrs: str) -> str:
    """A PriceList entry in the documented get_products (FormatVersion aws_v1) shape."""
    attributes = {
        "instanceType": "g5.xlarge",
        "regionCode": "us-west-2",
        "location": "US West (Oregon)",
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
        "licenseModel": "No License required",
        "usagetype": "USW2-BoxUsage:g5.xlarge",
        "vcpu": "4",
        "memory": "16 GiB",
        "gpu": "1",
    } | attrs
    return json.dumps(
        {
            "product": {"productFamily": "Compute Instance", "attributes": attributes, "sku": "ABC123SKU"},
            "serviceCode": "AmazonEC2",
            "terms": {
                "OnDemand": {
                    "ABC123SKU.JRTCKXETXF": {
                        "offerTermCode": "JRTCKXETXF",
                        "sku": "ABC123SKU",
                        "effectiveDate": "2025-01-01T00:00:00Z",
                        "termAttributes": {},
                        "priceDimensions": {
                            "ABC123SKU.JRTCKXETXF.6YS6EN2CT7": {
                                "unit": "Hrs",
                                "endRange": "Inf",
                                "beginRange": "0",
                                "description": "$1.006 per On Demand Linux g5.xlarge Instance Hour",
                                "appliesTo": [],
                                "rateCode": "ABC123SKU.JRTCKXETXF.6YS6EN2CT7",
                                "pricePerUnit": {"USD": "1.0060000000"},
                            }
                        },
                    }
                }
            },
            "version": "20250101000000",
            "publicationDate": "2025-01-01T00:00:00Z",
        }
    )


def _ebs_entry(family: str, attrs: dict[str, str], usd: str, unit: str = "GB-Mo") -> str:
    dim = {"unit": unit, "pricePerUnit": {"USD": usd}, "description": "", "beginRange": "0", "endRange": "Inf"}
    return json.dumps(
        {
            "product": {"productFamily": family, "attributes": {"regionCode": "eu-west-1"} | attrs, "sku": "S"},
            "terms": {"OnDemand": {"S.T": {"priceDimensions": {"S.T.R": dim}}}},
        }
    )


def _table() -> PriceTable:
    return PriceTable(
        as_of=date(2025, 1, 1),
        source="test",
        on_demand={"us-east-1": {"t3.medium": 0.0416, "g5.xlarge": 1.006}, "eu-west-1": {"t3.medium": 0.0456}},
        ebs_gb_month={"us-east-1": {"gp3": 0.08, "gp2": 0.10}, "eu-west-1": {"gp3": 0.088, "gp2": 0.11}},
        snapshot_gb_month={"us-east-1": 0.05, "eu-west-1": 0.055},
    )


# -- the shipped snapshot --------------------------------------------------------------------------------------


def test_shipped_snapshot_loads_and_is_dated() -> None:
    table = load_prices()
    assert table.source.startswith("AWS public price list")
    assert table.currency == "USD"
    assert date(2024, 1, 1) <= table.as_of <= date.today()
    for region in ("us-east-1", "us-east-2", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-1"):
        assert table.hourly("t3.medium", region) is not None, region
        assert table.ebs_monthly(100, region) > 0
        assert table.snapshot_monthly(100, region) > 0
    assert table.hourly("t3.medium", "us-east-1") == pytest.approx(0.0416)
    assert table.hourly("g4dn.xlarge", "us-east-1") == pytest.approx(0.526)
    assert table.hourly("p3.2xlarge", "eu-west-1") == pytest.approx(3.305)


@pytest.mark.parametrize(
    "itype",
    ["t3.micro", "t3.2xlarge", "m5.large", "m6i.4xlarge", "m7i.xlarge", "c5.4xlarge", "c6i.large", "r5.2xlarge",
     "r6i.large", "g4dn.12xlarge", "g5.12xlarge", "g6.xlarge", "p3.2xlarge", "p4d.24xlarge", "p5.48xlarge",
     "inf2.xlarge", "trn1.2xlarge"],
)
def test_snapshot_has_the_data_science_types(itype: str) -> None:
    assert load_prices().hourly(itype, "us-east-1") is not None


def test_every_type_moto_knows_has_a_price_or_a_clean_none() -> None:
    table = load_prices()
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1")
        names = [t["InstanceType"] for page in ec2.get_paginator("describe_instance_types").paginate()
                 for t in page["InstanceTypes"]]
    assert len(names) > 500
    priced = 0
    for name in names:
        for region in [*table.regions(), "sa-east-1"]:
            price = table.hourly(name, region)
            assert price is None or price > 0
            priced += price is not None
    assert priced > 400


def test_unknown_type_or_region_is_none() -> None:
    table = _table()
    assert table.hourly("t9.bogus", "us-east-1") is None
    assert table.hourly("t3.medium", "mars-north-1") is None
    assert table.monthly("t3.medium", "us-east-1") == pytest.approx(0.0416 * 730)


def test_ebs_and_snapshot_monthly() -> None:
    table = _table()
    assert table.ebs_monthly(100, "us-east-1") == pytest.approx(8.0)
    assert table.ebs_monthly(100, "us-east-1", "gp2") == pytest.approx(10.0)
    assert table.snapshot_monthly(20, "eu-west-1") == pytest.approx(1.10)
    # unknown region / type errs high, never free
    assert table.ebs_monthly(100, "mars-north-1") == pytest.approx(8.8)
    assert table.ebs_monthly(100, "us-east-1", "io9") == pytest.approx(10.0)
    assert table.snapshot_monthly(10, "mars-north-1") == pytest.approx(0.55)


def test_scaled_multiplies_every_price_and_keeps_the_original() -> None:
    table = _table()
    big = table.scaled(1000)
    assert big.hourly("t3.medium", "us-east-1") == pytest.approx(41.6)
    assert big.ebs_monthly(1, "eu-west-1") == pytest.approx(88.0)
    assert big.snapshot_monthly(1, "us-east-1") == pytest.approx(50.0)
    assert table.hourly("t3.medium", "us-east-1") == pytest.approx(0.0416)
    assert "×1000" in big.source
    with pytest.raises(ValueError):
        table.scaled(0)


def test_round_trip_through_json() -> None:
    table = _table()
    assert PriceTable.from_dict(json.loads(table.to_json())) == table


def test_from_dict_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        PriceTable.from_dict({"as_of": "yesterday", "on_demand": {}})
    with pytest.raises(ValueError):
        PriceTable.from_dict({"as_of": "2025-01-01"})


# -- loading rules ------------------------------------------------------------------------------------------------


def test_newer_refreshed_copy_wins(tmp_path: Path) -> None:
    shipped = load_prices()
    newer = merge_refresh(shipped, {"as_of": "2099-01-01", "on_demand": {"us-east-1": {"t3.medium": 0.5}}})
    user_prices_path().parent.mkdir(parents=True)
    user_prices_path().write_text(newer.to_json())
    table = load_prices()
    assert table.as_of == date(2099, 1, 1)
    assert table.hourly("t3.medium", "us-east-1") == 0.5


def test_older_or_broken_refreshed_copy_is_ignored() -> None:
    shipped = load_prices()
    user_prices_path().parent.mkdir(parents=True)
    older = merge_refresh(shipped, {"as_of": "2000-01-01", "on_demand": {"us-east-1": {"t3.medium": 0.5}}})
    user_prices_path().write_text(older.to_json())
    assert load_prices() == shipped
    user_prices_path().write_text("{not json")
    assert load_prices() == shipped


def test_explicit_path(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(_table().to_json())
    assert load_prices(path) == _table()


def test_merge_refresh_overlays_without_losing_the_rest() -> None:
    merged = merge_refresh(
        _table(),
        {
            "as_of": "2025-06-01",
            "source": "AWS Pricing API (refreshed)",
            "on_demand": {"us-east-1": {"t3.medium": 0.05}, "sa-east-1": {"t3.medium": 0.0672}},
            "ebs_gb_month": {"us-east-1": {"gp3": 0.09}},
            "snapshot_gb_month": {"sa-east-1": 0.068},
        },
    )
    assert merged.as_of == date(2025, 6, 1)
    assert merged.hourly("t3.medium", "us-east-1") == 0.05
    assert merged.hourly("g5.xlarge", "us-east-1") == 1.006
    assert merged.hourly("t3.medium", "sa-east-1") == 0.0672
    assert merged.ebs_monthly(1, "us-east-1", "gp2") == 0.10
    assert merged.ebs_monthly(1, "us-east-1") == 0.09
    assert merged.snapshot_monthly(1, "us-east-1") == 0.05
    assert merged.source == "AWS Pricing API (refreshed)"


# -- parsers ------------------------------------------------------------------------------------------------------


def test_parse_pricing_product() -> None:
    assert parse_pricing_product(_ec2_entry()) == ("g5.xlarge", "us-west-2", 1.006)


@pytest.mark.parametrize(
    "attrs",
    [{"operatingSystem": "Windows"}, {"tenancy": "Dedicated"}, {"preInstalledSw": "SQL Std"},
     {"capacitystatus": "UnusedCapacityReservation"}, {"regionCode": ""}],
)
def test_parse_pricing_product_skips_what_nbcloud_does_not_launch(attrs: dict[str, str]) -> None:
    assert parse_pricing_product(_ec2_entry(**attrs)) is None


def test_parse_pricing_product_skips_zero_placeholder_and_rejects_bad_json() -> None:
    zero = json.loads(_ec2_entry())
    dims = next(iter(zero["terms"]["OnDemand"].values()))["priceDimensions"]
    next(iter(dims.values()))["pricePerUnit"]["USD"] = "0.0000000000"
    assert parse_pricing_product(json.dumps(zero)) is None
    with pytest.raises(ValueError):
        parse_pricing_product("{truncated")


def test_parse_ebs_product() -> None:
    gp3 = _ebs_entry("Storage", {"volumeApiName": "gp3", "usagetype": "EU-EBS:VolumeUsage.gp3"}, "0.0880000000")
    snap = _ebs_entry("Storage Snapshot", {"usagetype": "EU-EBS:SnapshotUsage"}, "0.0500000000")
    archive = _ebs_entry("Storage Snapshot", {"usagetype": "EU-EBS:SnapshotArchiveStorage"}, "0.0125000000")
    iops = _ebs_entry("System Operation", {"volumeApiName": "gp3"}, "0.005", unit="IOPS-Mo")
    assert parse_ebs_product(gp3) == ("eu-west-1", "gp3", 0.088)
    assert parse_ebs_product(snap) == ("eu-west-1", "snapshot", 0.05)
    assert parse_ebs_product(archive) is None
    assert parse_ebs_product(iops) is None


# -- the boto3 edge (Pricing API stubbed: moto has none; spot against moto) -----------------------------------


class _StubSession:
    """Stands in for a boto3 session: hands out one stubbed pricing client."""

    def __init__(self, client: object) -> None:
        self._client = client
        self.asked: list[tuple[str, str]] = []

    def client(self, service: str, region: str) -> object:
        self.asked.append((service, region))
        return self._client


def _pricing_client() -> tuple[object, Stubber]:
    client = boto3.client("pricing", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    return client, Stubber(client)


def test_fetch_on_demand_pages_and_filters() -> None:
    client, stub = _pricing_client()
    windows = _ec2_entry(operatingSystem="Windows")
    stub.add_response("get_products", {"PriceList": [_ec2_entry(), windows], "NextToken": "t"})
    stub.add_response("get_products", {"PriceList": [_ec2_entry(instanceType="g5.2xlarge")]})
    session = _StubSession(client)
    with stub:
        prices = aws_pricing.fetch_on_demand(session, ["us-west-2"], None)
    assert prices == {"us-west-2": {"g5.xlarge": 1.006, "g5.2xlarge": 1.006}}
    assert session.asked == [("pricing", "us-east-1")]


def test_fetch_on_demand_asks_by_type_for_few_types() -> None:
    client, stub = _pricing_client()
    filters = [
        {"Type": "TERM_MATCH", "Field": f, "Value": v}
        for f, v in [("operatingSystem", "Linux"), ("tenancy", "Shared"), ("preInstalledSw", "NA"),
                     ("capacitystatus", "Used"), ("regionCode", "us-west-2"), ("instanceType", "g5.xlarge")]
    ]
    stub.add_response("get_products", {"PriceList": [_ec2_entry()]},
                      {"ServiceCode": "AmazonEC2", "Filters": filters, "FormatVersion": "aws_v1"})
    with stub:
        assert aws_pricing.fetch_on_demand(_StubSession(client), ["us-west-2"], ["g5.xlarge"]) == {
            "us-west-2": {"g5.xlarge": 1.006}
        }


def test_access_denied_names_the_permission_and_the_fallback() -> None:
    client, stub = _pricing_client()
    stub.add_client_error("get_products", service_error_code="AccessDeniedException", http_status_code=400)
    with stub, pytest.raises(UsageError) as info:
        aws_pricing.fetch_on_demand(_StubSession(client), ["us-east-1"], None)
    assert "pricing:GetProducts" in info.value.hint
    assert "snapshot" in info.value.hint


def test_no_credentials_is_a_credentials_error() -> None:
    class NoCreds:
        def get_paginator(self, name: str) -> object:
            raise NoCredentialsError()

    with pytest.raises(CredentialsError):
        aws_pricing.fetch_on_demand(_StubSession(NoCreds()), ["us-east-1"], None)


def test_other_client_errors_are_remote_errors() -> None:
    client, stub = _pricing_client()
    stub.add_client_error("get_products", service_error_code="InternalErrorException", http_status_code=500)
    with stub, pytest.raises(RemoteError):
        aws_pricing.fetch_on_demand(_StubSession(client), ["us-east-1"], None)


def test_refresh_prices_writes_a_private_merged_table(tmp_path: Path) -> None:
    client, stub = _pricing_client()
    # base knows two types, so each is asked for by name (sorted): g5.xlarge (none in eu-west-1), t3.medium
    stub.add_response("get_products", {"PriceList": []})
    stub.add_response("get_products", {"PriceList": [_ec2_entry(instanceType="t3.medium", regionCode="eu-west-1")]})
    gp3 = _ebs_entry("Storage", {"volumeApiName": "gp3"}, "0.0900000000")
    stub.add_response("get_products", {"PriceList": [gp3]})
    stub.add_response("get_products", {"PriceList": []})
    out = tmp_path / "data" / "prices.json"
    with stub:
        table = aws_pricing.refresh_prices(_StubSession(client), out, regions=["eu-west-1"], base=_table())
    assert table.hourly("t3.medium", "eu-west-1") == 1.006
    assert table.hourly("g5.xlarge", "us-east-1") == 1.006  # kept from the base
    assert table.ebs_monthly(1, "eu-west-1") == 0.09
    assert table.as_of == date.today()
    assert out.stat().st_mode & 0o777 == 0o600
    assert load_prices(out) == table


def test_fetch_spot_against_moto() -> None:
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1")
        price = aws_pricing.fetch_spot(ec2, "t3.medium")
        zoned = aws_pricing.fetch_spot(ec2, "t3.medium", "us-east-1a")
        missing = aws_pricing.fetch_spot(ec2, "t3.medium", "us-east-1zz")
    assert price is not None and price > 0
    assert zoned == price
    assert missing is None
