"""Cost arithmetic: figures to the cent, only running time accrues, budgets, formatting, spot history."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from nbcloud.models import Volume
from nbcloud.money.cost import (
    CostLine,
    CostReport,
    RunningPeriod,
    accrued_usd,
    billed_seconds,
    budget_remaining,
    cost_line,
    format_usd,
    idle_volume_monthly,
    latest_spot_price,
    running_periods_from_events,
)
from nbcloud.money.pricing import PriceTable, load_prices

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def at(**delta: float) -> datetime:
    return T0 + timedelta(**delta)


@pytest.fixture(autouse=True)
def _private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBCLOUD_HOME", str(tmp_path / "home"))  # no refreshed table: the shipped snapshot


# Hand-computed: hourly × hours, rounded to the cent.
@pytest.mark.parametrize(
    ("itype", "region", "seconds", "hourly", "expected"),
    [
        ("t3.medium", "us-east-1", 3600, 0.0416, "$0.04"),  # 0.0416
        ("t3.micro", "us-east-2", 720 * 3600, 0.0104, "$7.49"),  # 7.488
        ("m5.xlarge", "eu-west-1", 3.5 * 3600, 0.214, "$0.75"),  # 0.749
        ("c6i.4xlarge", "us-east-1", 45 * 60, 0.68, "$0.51"),  # 0.51
        ("g5.xlarge", "us-east-1", 8 * 3600, 1.006, "$8.05"),  # 8.048
        ("p3.2xlarge", "ap-southeast-1", 90 * 60, 4.234, "$6.35"),  # 6.351
        ("g4dn.xlarge", "eu-central-1", 10, 0.658, "$0.01"),  # 60 s minimum: 0.010967
        ("p5.48xlarge", "us-west-2", 24 * 3600, 98.32, "$2,359.68"),  # 2359.68
    ],
)
def test_cost_figures_match_the_price_table_to_the_cent(
    itype: str, region: str, seconds: float, hourly: float, expected: str
) -> None:
    table = load_prices()
    assert table.hourly(itype, region) == pytest.approx(hourly)
    periods = [RunningPeriod(T0, at(seconds=seconds))]
    assert format_usd(accrued_usd(periods, table.hourly(itype, region) or 0, now=at(days=60))) == expected


def test_stop_start_accrues_only_running_time() -> None:
    events = [
        (at(minutes=0), "pending"),
        (at(minutes=1), "running"),
        (at(minutes=61), "stopping"),
        (at(minutes=62), "stopped"),
        (at(hours=10), "pending"),
        (at(hours=10, minutes=1), "running"),
        (at(hours=10, minutes=31), "stopped"),
    ]
    periods = running_periods_from_events(events)
    assert periods == [RunningPeriod(at(minutes=1), at(minutes=61)), RunningPeriod(at(hours=10, minutes=1),
                                                                                   at(hours=10, minutes=31))]
    now = at(days=1)
    assert billed_seconds(periods, now) == 90 * 60
    assert accrued_usd(periods, 1.0, now) == pytest.approx(1.5)  # 90 min at $1/h, not 24 h


def test_events_out_of_order_with_repeats_and_an_open_period() -> None:
    events = [
        (at(minutes=30), "running"),  # a status refresh seeing it running
        (at(minutes=0), "running"),  # the client's own start call
        (at(minutes=40), "running"),
        (at(minutes=60), "stopped"),
        (at(minutes=65), "stopped"),
        (at(minutes=70), "rebooting?"),  # unknown: ignored
        (at(minutes=90), "running"),
    ]
    periods = running_periods_from_events(events)
    assert periods == [RunningPeriod(at(minutes=0), at(minutes=60)), RunningPeriod(at(minutes=90), None)]
    assert billed_seconds(periods, at(minutes=120)) == 90 * 60


def test_terminated_closes_the_period() -> None:
    periods = running_periods_from_events([(T0, "running"), (at(hours=2), "terminated")])
    assert periods == [RunningPeriod(T0, at(hours=2))]
    assert accrued_usd(periods, 0.5, at(days=3)) == pytest.approx(1.0)


def test_sixty_second_minimum_per_start() -> None:
    periods = [RunningPeriod(T0, at(seconds=5)), RunningPeriod(at(minutes=5), at(minutes=5, seconds=59))]
    assert billed_seconds(periods, at(hours=1)) == 120
    assert billed_seconds([RunningPeriod(T0, at(seconds=61))], at(hours=1)) == 61
    assert billed_seconds([RunningPeriod(at(hours=2), None)], at(hours=1)) == 0  # not started yet


def test_the_minimum_knob_lowers_it_within_bounds_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from nbcloud.errors import UsageError

    periods = [RunningPeriod(T0, at(seconds=10)), RunningPeriod(at(seconds=100), at(seconds=130))]
    monkeypatch.setenv("NBCLOUD_BILLING_MINIMUM", "20")  # the sandbox's money tests: 20 s per start
    assert billed_seconds(periods, at(hours=1)) == 20 + 30
    monkeypatch.setenv("NBCLOUD_BILLING_MINIMUM", "")
    assert billed_seconds(periods, at(hours=1)) == 60 + 60
    for bad in ("0", "19", "61", "1e9", "x"):
        monkeypatch.setenv("NBCLOUD_BILLING_MINIMUM", bad)
        with pytest.raises(UsageError, match="NBCLOUD_BILLING_MINIMUM"):
            billed_seconds(periods, at(hours=1))


def test_since_window() -> None:
    periods = [RunningPeriod(T0, at(hours=2)), RunningPeriod(at(hours=5), None)]
    now = at(hours=6)
    assert billed_seconds(periods, now, since=at(hours=1)) == 2 * 3600  # 1 h of the first + 1 h of the open one
    assert billed_seconds(periods, now, since=at(hours=3)) == 3600
    assert billed_seconds(periods, now, since=at(hours=5, minutes=59, seconds=30)) == 30  # clipped: no minimum
    assert billed_seconds(periods, now, since=at(hours=7)) == 0


def test_budget_remaining() -> None:
    assert budget_remaining(None, 5.0) is None
    assert budget_remaining(10.0, 2.5) == pytest.approx(7.5)
    assert budget_remaining(10.0, 12.0) == 0.0


def test_budget_cap_trips_fast_with_a_scaled_table() -> None:
    table = load_prices().scaled(3600)  # t3.medium: $0.0416/s
    hourly = table.hourly("t3.medium", "us-east-1") or 0
    periods = [RunningPeriod(T0, None)]
    assert budget_remaining(5.0, accrued_usd(periods, hourly, at(seconds=60))) == pytest.approx(5.0 - 2.496)
    assert budget_remaining(5.0, accrued_usd(periods, hourly, at(seconds=121))) == 0.0


@pytest.mark.parametrize(
    ("amount", "text"),
    [(0.42, "$0.42"), (12.3, "$12.30"), (0, "$0.00"), (0.004, "<$0.01"), (0.005, "$0.01"), (0.0049, "<$0.01"),
     (1234.5, "$1,234.50"), (-1.5, "-$1.50"), (None, "n/a"), (0.999, "$1.00")],
)
def test_format_usd(amount: float | None, text: str) -> None:
    assert format_usd(amount) == text


def test_idle_volume_monthly() -> None:
    table = PriceTable(as_of=date(2025, 1, 1), source="t", ebs_gb_month={"us-east-1": {"gp3": 0.08, "gp2": 0.10}})
    volumes = [
        Volume(volume_id="vol-1", name="root", size_gb=30, zone="us-east-1a", state="in-use"),
        Volume(volume_id="vol-2", name="data", size_gb=100, zone="us-east-1a", state="in-use", volume_type="gp2"),
        {"Size": 20, "VolumeType": "gp3"},  # a describe_volumes item
    ]
    assert idle_volume_monthly(volumes, table, "us-east-1") == pytest.approx(2.4 + 10.0 + 1.6)
    assert idle_volume_monthly([], table, "us-east-1") == 0


def test_latest_spot_price() -> None:
    items = [
        {"InstanceType": "g5.xlarge", "AvailabilityZone": "us-east-1a", "ProductDescription": "Linux/UNIX",
         "SpotPrice": "0.40", "Timestamp": at(hours=-2)},
        {"InstanceType": "g5.xlarge", "AvailabilityZone": "us-east-1a", "ProductDescription": "Linux/UNIX",
         "SpotPrice": "0.35", "Timestamp": at(hours=-1)},
        {"InstanceType": "g5.xlarge", "AvailabilityZone": "us-east-1b", "ProductDescription": "Linux/UNIX (Amazon VPC)",
         "SpotPrice": "0.38", "Timestamp": at(hours=-3)},
        {"InstanceType": "g5.xlarge", "AvailabilityZone": "us-east-1c", "ProductDescription": "Windows",
         "SpotPrice": "0.90", "Timestamp": at(hours=-1)},
        {"InstanceType": "g5.2xlarge", "AvailabilityZone": "us-east-1a", "ProductDescription": "Linux/UNIX",
         "SpotPrice": "0.60", "Timestamp": at(hours=-1)},
    ]
    assert latest_spot_price(items, "g5.xlarge", "us-east-1a") == pytest.approx(0.35)  # newest, not lowest
    assert latest_spot_price(items, "g5.xlarge") == pytest.approx(0.38)  # highest zone: never undersell
    assert latest_spot_price(items, "g5.xlarge", "us-east-1c") is None
    assert latest_spot_price(items, "p5.48xlarge") is None


def test_cost_line_and_report() -> None:
    table = PriceTable(
        as_of=date(2025, 1, 1),
        source="t",
        on_demand={"us-east-1": {"t3.medium": 0.0416, "g5.xlarge": 1.006}},
        ebs_gb_month={"us-east-1": {"gp3": 0.08}},
    )
    now = at(hours=10)
    events = [(T0, "running"), (at(hours=5), "stopped")]
    vol = [Volume(volume_id="v", name=None, size_gb=100, zone="us-east-1a", state="in-use")]
    ondemand = cost_line(name="a", instance_type="g5.xlarge", region="us-east-1", events=events, table=table,
                         now=now, volumes=vol, state="stopped")
    spot = cost_line(name="b", instance_type="g5.xlarge", region="us-east-1", events=events, table=table, now=now,
                     lifecycle="spot", spot_hourly=0.4)
    unknown = cost_line(name="c", instance_type="x9.huge", region="us-east-1", events=events, table=table, now=now)
    assert ondemand.accrued == pytest.approx(5.03)
    assert ondemand.volume_monthly == pytest.approx(8.0)
    assert spot.hourly == 0.4 and spot.accrued == pytest.approx(2.0)
    assert unknown.hourly is None and unknown.accrued is None

    report = CostReport(lines=(ondemand, spot, unknown), now=now, prices_as_of="2025-01-01")
    assert report.total_accrued == pytest.approx(7.03)
    assert report.total_volume_monthly == pytest.approx(8.0)
    assert not report.complete
    data = report.to_json()
    assert data["total_accrued_usd"] == pytest.approx(7.03)
    assert data["lines"][2]["accrued_usd"] is None
    assert CostReport(lines=(ondemand,), now=now).complete
    assert isinstance(report.lines[0], CostLine)
