"""Issue 7/8 follow-ups, no network: per-period prices (spot), stops back-dated to the cloud's stop time, and
`status` reading agent states in parallel."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from nbcloud.errors import RemoteError
from nbcloud.models import Instance
from nbcloud.money.cost import (
    PRICE_EVENT,
    RunningPeriod,
    accrued_usd,
    billed_seconds,
    parse_transition_time,
    period_hourly,
    running_periods_from_events,
    stop_event_time,
)
from nbcloud.state import Store

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def at(**kw: float) -> datetime:
    return T0 + timedelta(**kw)


# -- accrual with a price per period ---------------------------------------------------------------------------


def test_each_period_bills_at_the_price_recorded_when_it_began() -> None:
    # on-demand hour at $1, stopped 2 h, then an hour at $0.30 (say the record was relaunched as spot)
    events = [(at(), "running", 1.0), (at(hours=1), "stopped", None),
              (at(hours=3), "running", 0.30), (at(hours=4), "stopped", None)]
    periods = running_periods_from_events(events)
    assert [p.hourly for p in periods] == [1.0, 0.30]
    assert accrued_usd(periods, 99.0, at(days=1)) == pytest.approx(1.30)  # the default never applies
    assert period_hourly(periods, 99.0) == 0.30


def test_spot_accrues_at_spot_not_on_demand() -> None:
    on_demand, spot = 1.006, 0.3018  # g5.xlarge-like: spot about 30 % of on-demand
    events = [(at(), "running", spot), (at(hours=10), "terminated", None)]
    periods = running_periods_from_events(events)
    assert accrued_usd(periods, on_demand, at(days=1)) == pytest.approx(10 * spot)


def test_periods_without_a_price_use_the_default_and_unknown_is_none() -> None:
    # a store from before prices were recorded: 2-tuples and NULL prices mean "the table's price"
    periods = running_periods_from_events([(at(), "running"), (at(hours=1), "stopped")])
    assert periods == [RunningPeriod(at(), at(hours=1))]
    assert accrued_usd(periods, 0.5, at(days=1)) == pytest.approx(0.5)
    assert accrued_usd(periods, None, at(days=1)) is None, "an unknown price must not read as free"
    assert accrued_usd([], None, at(days=1)) == 0.0
    # a period with its own price needs no default
    priced = running_periods_from_events([(at(), "running", 2.0), (at(minutes=30), "stopped", None)])
    assert accrued_usd(priced, None, at(days=1)) == pytest.approx(1.0)


def test_repeated_running_keeps_the_first_price_or_adopts_one_it_lacked() -> None:
    periods = running_periods_from_events([(at(), "running", 1.0), (at(minutes=5), "running", 2.0)])
    assert periods == [RunningPeriod(at(), None, 1.0)]
    periods = running_periods_from_events([(at(), "running", None), (at(minutes=5), "running", 2.0)])
    assert periods == [RunningPeriod(at(), None, 2.0)]


def test_a_price_change_splits_the_period_without_a_second_minimum() -> None:
    events = [(at(), "running", 0.30), (at(hours=1), PRICE_EVENT, 0.60), (at(hours=2), "stopped", None)]
    periods = running_periods_from_events(events)
    assert periods == [RunningPeriod(at(), at(hours=1), 0.30), RunningPeriod(at(hours=1), at(hours=2), 0.60, True)]
    assert accrued_usd(periods, None, at(days=1)) == pytest.approx(0.90)
    # 20 s at one price, 20 s at another, then stopped: one start, one 60-s minimum (top-up on the first segment)
    short = running_periods_from_events([(at(), "running", 3600.0), (at(seconds=20), PRICE_EVENT, 7200.0),
                                         (at(seconds=40), "stopped", None)])
    assert billed_seconds(short, at(hours=1)) == 60
    assert accrued_usd(short, None, at(hours=1)) == pytest.approx(40 * 1.0 + 20 * 2.0)


def test_price_events_outside_a_period_or_unchanged_are_ignored() -> None:
    events = [(at(), PRICE_EVENT, 5.0), (at(minutes=1), "running", 1.0), (at(minutes=2), PRICE_EVENT, 1.0),
              (at(hours=1, minutes=1), "stopped", None), (at(hours=2), PRICE_EVENT, 9.0)]
    periods = running_periods_from_events(events)
    assert periods == [RunningPeriod(at(minutes=1), at(hours=1, minutes=1), 1.0)]


def test_since_cuts_split_periods_and_charges_no_minimum_for_a_stretch_begun_before() -> None:
    events = [(at(), "running", 1.0), (at(hours=1), PRICE_EVENT, 2.0), (at(hours=2), "stopped", None)]
    periods = running_periods_from_events(events)
    assert accrued_usd(periods, None, at(days=1), since=at(minutes=30)) == pytest.approx(0.5 + 2.0)
    assert accrued_usd(periods, None, at(days=1), since=at(hours=1, minutes=59, seconds=30)) == pytest.approx(
        30 * 2.0 / 3600)


def test_accrual_across_stop_start_with_a_back_dated_stop() -> None:
    """The agent stopped the instance at 12:40; nbcloud looked only at 15:00. Billed: 40 min, not 3 h."""
    looked = at(hours=3)
    stop = stop_event_time(parse_transition_time("User initiated (2026-11-23 12:40:00 GMT)"), at(), looked)
    assert stop == at(minutes=40)
    periods = running_periods_from_events([(at(), "running", 0.6), (stop, "stopped", None)])
    assert accrued_usd(periods, None, looked) == pytest.approx(0.4)


# -- the cloud's stop time ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("reason", "expected"), [
    ("User initiated (2026-11-23 15:00:00 GMT)", datetime(2026, 11, 23, 15, 0, tzinfo=UTC)),  # AWS
    ("User initiated (2026-11-23 15:00:07 UTC)", datetime(2026, 11, 23, 15, 0, 7, tzinfo=UTC)),  # moto
    ("Server.SpotInstanceTermination: (2026-01-02 03:04:05 GMT)", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ("", None), (None, None), ("User initiated", None), ("User initiated (2026-13-45 99:00:00 GMT)", None),
])
def test_parse_transition_time(reason: str | None, expected: datetime | None) -> None:
    assert parse_transition_time(reason) == expected


def test_stop_event_time_is_clamped_to_the_log_and_now() -> None:
    now = at(hours=1)
    assert stop_event_time(None, at(), now) == now  # no time reported: when nbcloud saw it (an upper bound)
    assert stop_event_time(at(minutes=10), at(), now) == at(minutes=10)
    assert stop_event_time(at(hours=5), at(), now) == now  # a clock ahead of ours: never in the future
    assert stop_event_time(at(minutes=-5), at(), now) == at()  # never before the period began
    assert stop_event_time(at(minutes=10), None, now) == at(minutes=10)


def _api_instance(state: str, reason: str) -> dict[str, Any]:
    return {"InstanceId": "i-1", "State": {"Name": state}, "InstanceType": "t3.medium",
            "StateTransitionReason": reason, "Tags": [{"Key": "nbcloud:name", "Value": "lab"}]}


def test_instance_from_api_reads_the_stop_time_only_when_stopped() -> None:
    from nbcloud.providers.aws.instances import instance_from_api

    stopped = instance_from_api(_api_instance("stopped", "User initiated (2026-11-23 15:00:00 UTC)"), "r", "aws")
    assert stopped.stopped_at == datetime(2026, 11, 23, 15, tzinfo=UTC)
    running = instance_from_api(_api_instance("running", "User initiated (2026-11-23 15:00:00 UTC)"), "r", "aws")
    assert running.stopped_at is None, "an old stop's reason must not end a running period"


# -- the store ------------------------------------------------------------------------------------------------------


def test_store_keeps_prices_per_period_and_price_changes(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    assert store.record_state("lab", "i-1", "running", at(), hourly=0.3)
    assert not store.record_state("lab", "i-1", "running", at(minutes=1), hourly=0.3)  # not a change
    assert not store.record_price("lab", "i-1", 0.3, at(minutes=2))  # the price in force
    assert store.record_price("lab", "i-1", 0.4, at(minutes=3))
    assert not store.record_price("lab", "i-1", 0.4, at(minutes=4))
    assert store.last_state("lab", "i-1") == "running", "a price row is not a state"
    assert not store.record_state("lab", "i-1", "running", at(minutes=5)), "a price row must not re-open running"
    assert store.record_state("lab", "i-1", "stopped", at(minutes=30))
    assert [s for _, s, _ in store.events("lab")] == ["running", "stopped"]  # the old shape, prices left out
    assert store.priced_events("lab") == [(at(), "running", 0.3), (at(minutes=3), "price", 0.4),
                                          (at(minutes=30), "stopped", None)]
    assert store.last_event_at("lab", "i-1") == at(minutes=30)
    periods = running_periods_from_events(store.priced_events("lab"))
    assert accrued_usd(periods, 9.9, at(days=1)) == pytest.approx(0.3 * 3 / 60 + 0.4 * 27 / 60)
    store.close()


def test_store_from_before_prices_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    old = sqlite3.connect(db)
    old.executescript("CREATE TABLE events (name TEXT NOT NULL, instance_id TEXT NOT NULL, at REAL NOT NULL, "
                      "state TEXT NOT NULL);")
    old.execute("INSERT INTO events VALUES ('lab', 'i-1', ?, 'running')", (T0.timestamp(),))
    old.commit()
    old.close()
    store = Store(db)
    assert store.priced_events("lab") == [(T0, "running", None)]
    store.record_state("lab", "i-1", "stopped", at(hours=1))
    assert accrued_usd(running_periods_from_events(store.priced_events("lab")), 0.5, at(days=1)) == pytest.approx(0.5)
    store.close()
    Store(db).close()  # a second open finds the column there


# -- ops: the price a period begins at, the agent's figure, the back-dated stop --------------------------------------


class FakeProvider:
    name = "sandbox"
    region = "us-east-1"

    def __init__(self, spot: float | Exception | None) -> None:
        self.spot = spot
        self.calls = 0

    def spot_price(self, instance_type: str, zone: str | None = None) -> float | None:
        self.calls += 1
        if isinstance(self.spot, Exception):
            raise self.spot
        return self.spot


def fake(spot: float | Exception | None) -> Any:
    """A provider that only answers spot_price (typed Any: it is not a whole Provider)."""
    return FakeProvider(spot)


def _instance(lifecycle: str = "on-demand", state: str = "running", **kw: Any) -> Instance:
    return Instance(name="lab", instance_id="i-1", state=state, instance_type="t3.medium", region="us-east-1",
                    provider="sandbox", lifecycle=lifecycle, zone="us-east-1a", **kw)


def test_start_price_spot_on_demand_and_fallbacks(nbcloud_home: Path) -> None:
    from nbcloud.money.pricing import load_prices
    from nbcloud.money.quotes import start_price

    on_demand = load_prices().hourly("t3.medium", "us-east-1")
    assert on_demand
    assert start_price(fake(0.0125), _instance("spot")) == 0.0125
    assert start_price(fake(0.0125), _instance("on-demand")) == on_demand
    assert start_price(fake(None), _instance("spot")) == on_demand  # not offered: the upper bound
    assert start_price(fake(RemoteError("throttled")), _instance("spot")) == on_demand


def _ctx(tmp_path: Path, provider: FakeProvider) -> Any:
    from nbcloud.state import Record

    store = Store(tmp_path / "state.db")
    store.put(Record(name="lab", provider="sandbox", region="us-east-1", instance_id="i-1", state="running",
                     instance_type="t3.medium", lifecycle="spot", host="10.0.0.2"))
    return SimpleNamespace(store=store, provider_for=lambda record: provider)


def test_sync_record_prices_a_start_and_back_dates_the_agents_stop(nbcloud_home: Path, tmp_path: Path) -> None:
    from nbcloud.ops.costs import current_hourly
    from nbcloud.ops.instances import sync_record

    provider = fake(0.0125)
    ctx = _ctx(tmp_path, provider)
    started = datetime.now(UTC) - timedelta(hours=2)
    ctx.store.record_state("lab", "i-1", "pending", started - timedelta(seconds=5))
    sync_record(ctx, ctx.store.get("lab"), _instance("spot"), provider)
    ctx.store._db.execute("UPDATE events SET at = ? WHERE state = 'running'", (started.timestamp(),))
    assert current_hourly(ctx, "lab") == 0.0125, "the agent's cap must count at the spot price"

    agent_stop = started + timedelta(minutes=30)
    reason_time = agent_stop.replace(microsecond=0)
    sync_record(ctx, ctx.store.get("lab"), _instance("spot", "stopped", stopped_at=reason_time), provider)
    periods = running_periods_from_events(ctx.store.priced_events("lab"))
    assert periods[-1].end == reason_time, "the stop is the cloud's, not when nbcloud looked"
    accrued = accrued_usd(periods, 9.9, datetime.now(UTC))
    assert accrued == pytest.approx(0.0125 * (reason_time - started).total_seconds() / 3600)
    ctx.store.close()
