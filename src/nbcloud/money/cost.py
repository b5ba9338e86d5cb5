"""Cost arithmetic: what an instance has cost so far, what its disks cost while it sleeps, what is left of a budget.

Pure functions over timestamps and prices, so the figures ``nbcloud cost`` and the budget cap act on are unit-tested
to the cent. The inputs come from the client's own records (its start/stop calls and the states it saw on status
refreshes); AWS's bill is the authority, these are the client's best estimate of it.

Billing model (EC2 Linux on-demand and spot): per second, with a 60-second minimum each time the instance enters
``running``. Only ``running`` is billed; ``pending``, ``stopping``, ``stopped``, ``shutting-down`` and
``terminated`` are not (hibernation's ``stopping`` is billed, nbcloud does not hibernate). EBS volumes bill per
GB-month whatever the instance does: that is the "stopped but still paying" line users are surprised by.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import UsageError
from .pricing import PriceTable

__all__ = [
    "BILLING_MINIMUM_ENV",
    "MIN_BILLED_SECONDS",
    "PRICE_EVENT",
    "CostLine",
    "CostReport",
    "RunningPeriod",
    "accrued_usd",
    "billed_seconds",
    "budget_remaining",
    "cost_line",
    "format_usd",
    "idle_volume_monthly",
    "latest_spot_price",
    "min_billed_seconds",
    "parse_transition_time",
    "period_hourly",
    "running_periods_from_events",
    "stop_event_time",
]

#: Linux on-demand/spot instances bill at least one minute per start.
MIN_BILLED_SECONDS = 60.0
#: A hidden knob for the test suite and benches (like NBCLOUD_IDLE_STOP_FLOOR): the sandbox's money tests wait past
#: the minimum, and with it at 20 s they wait a third as long and still run every path. Only 20-60 s is accepted.
BILLING_MINIMUM_ENV = "NBCLOUD_BILLING_MINIMUM"
_LOWEST_MINIMUM = 20


def min_billed_seconds() -> float:
    """The minimum billed per start: 60 s, or NBCLOUD_BILLING_MINIMUM (20-60) where a test lowered it."""
    text = os.environ.get(BILLING_MINIMUM_ENV, "").strip()
    if not text:
        return MIN_BILLED_SECONDS
    value = int(text) if text.isdigit() else 0
    if not _LOWEST_MINIMUM <= value <= MIN_BILLED_SECONDS:
        raise UsageError(f"{BILLING_MINIMUM_ENV}={text!r} is not a number of seconds in "
                         f"{_LOWEST_MINIMUM}-{MIN_BILLED_SECONDS:.0f}", f"unset {BILLING_MINIMUM_ENV}")
    return float(value)

_BILLED_STATES = frozenset({"running"})
_UNBILLED_STATES = frozenset({"pending", "stopping", "stopped", "shutting-down", "terminated"})

#: A pseudo-state in the event log: the price of the running period changed at that moment (a spot price moved).
#: It never opens or closes a period; it only splits one, so the 60-s minimum is not paid twice.
PRICE_EVENT = "price"


@dataclass(frozen=True)
class RunningPeriod:
    """One stretch in ``running``; ``end`` None means it is running still (use ``now``). Use aware UTC times.

    ``hourly`` is the price this stretch bills at, as recorded when it began (None: not recorded, the caller's
    default applies). ``continued`` marks a stretch that follows the previous one without a stop (only the price
    changed): the instance did not start again, so no second 60-s minimum.
    """

    start: datetime
    end: datetime | None = None
    hourly: float | None = None
    continued: bool = False

    def seconds(self, now: datetime) -> float:
        end = self.end if self.end is not None else now
        return max(0.0, (min(end, now) - self.start).total_seconds())


Event = tuple[datetime, str] | tuple[datetime, str, float | None]


def running_periods_from_events(events: Iterable[Event]) -> list[RunningPeriod]:
    """Fold ``(timestamp, state[, hourly])`` transitions into the periods the instance was billed.

    The client records transitions twice over (its own start/stop calls, then the states status refreshes see),
    so repeats are normal: a second ``running`` inside an open period is ignored and the earliest one counts (the
    estimate errs towards more cost, never less). A ``running`` event's ``hourly`` is the price recorded when that
    period began; a :data:`PRICE_EVENT` inside an open period ends it there and continues at the new price.
    Unknown states are skipped. Events need not be sorted.
    """
    periods: list[RunningPeriod] = []
    open_since: datetime | None = None
    open_price: float | None = None
    continued = False
    for event in sorted(events, key=lambda e: e[0]):
        when, state = event[0], event[1].lower()
        price = event[2] if len(event) > 2 else None
        if state in _BILLED_STATES:
            if open_since is None:
                open_since, open_price, continued = when, price, False
            elif open_price is None:
                open_price = price  # the repeat knows the price the first sighting did not
        elif state == PRICE_EVENT:
            if open_since is not None and price is not None and price != open_price:
                if when > open_since:
                    periods.append(RunningPeriod(open_since, when, open_price, continued))
                    open_since, continued = when, True
                open_price = price
        elif state in _UNBILLED_STATES and open_since is not None:
            periods.append(RunningPeriod(open_since, when, open_price, continued))
            open_since, open_price, continued = None, None, False
    if open_since is not None:
        periods.append(RunningPeriod(open_since, None, open_price, continued))
    return periods


def _billed(periods: Sequence[RunningPeriod], now: datetime, since: datetime | None) -> list[float]:
    """Billed seconds of each period (same order): per second, plus the top-up to 60 s per start.

    The minimum is per start, not per price segment: a stretch split by price changes pays one top-up
    (``60 - its total``, if positive) on its first segment. With ``since``, only the part of each period after
    ``since`` counts, and a stretch that began before ``since`` already paid its minimum.
    """
    out = [0.0] * len(periods)
    minimum = min_billed_seconds()
    stretch_first: int | None = None
    stretch_total = 0.0
    stretch_in_window = False

    def close() -> None:
        if stretch_first is not None and stretch_in_window:
            out[stretch_first] += max(0.0, minimum - stretch_total)

    for index, period in enumerate(periods):
        if not period.continued:
            close()
            stretch_first, stretch_total = index, 0.0
            stretch_in_window = period.start < now and (since is None or period.start >= since)
        if period.start >= now:
            continue
        start = period.start if since is None else max(period.start, since)
        seconds = RunningPeriod(start, period.end).seconds(now) if (period.end is None or period.end > start) else 0.0
        out[index] = seconds
        stretch_total += seconds
    close()
    return out


def billed_seconds(periods: Iterable[RunningPeriod], now: datetime, since: datetime | None = None) -> float:
    """Seconds billed across ``periods`` up to ``now``: per second, 60 s minimum per start.

    With ``since``, only the part of each period after ``since`` counts; a period cut by ``since`` started
    earlier and already paid its minimum, so the minimum applies only to periods that start inside the window.
    """
    return sum(_billed(list(periods), now, since))


def accrued_usd(
    periods: Iterable[RunningPeriod], hourly: float | None, now: datetime, since: datetime | None = None
) -> float | None:
    """Dollars accrued by running time only (a stopped stretch costs nothing for compute).

    Each period bills at its own recorded ``hourly`` (a spot instance at the spot price it was started at, an
    on-demand one at the table's price); ``hourly`` is the default for periods recorded without a price. None when
    a billed period has neither (never 0: an unknown price must not read as free).

    Linux on-demand is billed per second with a 60-second minimum per start (spot likewise), so each period
    counts ``max(60, seconds)``. Unrounded: round only for display (``format_usd``) so totals do not drift.
    """
    periods = list(periods)
    total = 0.0
    for period, seconds in zip(periods, _billed(periods, now, since), strict=True):
        if not seconds:
            continue
        price = period.hourly if period.hourly is not None else hourly
        if price is None:
            return None
        total += seconds * price / 3600.0
    return total


def period_hourly(periods: Sequence[RunningPeriod], default: float | None) -> float | None:
    """The price the latest period bills (or billed) at: what `status` shows as $/h and the agent's cap uses."""
    if periods and periods[-1].hourly is not None:
        return periods[-1].hourly
    return default


_TRANSITION_TIME = re.compile(r"\((\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2})\s*(?:GMT|UTC|Z)?\)")


def parse_transition_time(reason: str | None) -> datetime | None:
    """The moment in EC2's ``StateTransitionReason``: ``"User initiated (2026-11-23 15:00:00 GMT)"`` (AWS writes
    GMT, moto UTC). Instance-initiated stops (the agent's ``shutdown``) carry one too. None when there is none."""
    if not reason:
        return None
    match = _TRANSITION_TIME.search(reason)
    if not match:
        return None
    try:
        return datetime.fromisoformat(match.group(1).replace("T", " ")).replace(tzinfo=UTC)
    except ValueError:
        return None


def stop_event_time(reported: datetime | None, after: datetime | None, now: datetime) -> datetime:
    """When to record a stop nbcloud noticed only now: the cloud's own transition time when it has one.

    Clamped to ``[after, now]``: never before the last event already recorded for the instance (a skewed clock
    must not make a period end before it began or reorder the log) and never in the future.
    """
    when = now if reported is None else min(reported, now)
    if after is not None and when < after:
        when = after
    return when


def _volume_fields(volume: Any) -> tuple[float, str]:
    if isinstance(volume, Mapping):  # a describe_volumes item
        return float(volume.get("Size", volume.get("size_gb", 0))), str(
            volume.get("VolumeType", volume.get("volume_type", "gp3"))
        )
    return float(volume.size_gb), str(getattr(volume, "volume_type", "gp3"))


def idle_volume_monthly(volumes: Iterable[Any], table: PriceTable, region: str) -> float:
    """Dollars per month the volumes cost while the instance is stopped (they cost the same while it runs).

    ``volumes`` are ``nbcloud.models.Volume`` objects or ``describe_volumes`` items (``Size``, ``VolumeType``).
    """
    total = 0.0
    for volume in volumes:
        size, vtype = _volume_fields(volume)
        total += table.ebs_monthly(size, region, vtype)
    return total


def budget_remaining(max_cost: float | None, accrued: float) -> float | None:
    """Dollars left before the cap (never negative); None when there is no cap."""
    if max_cost is None:
        return None
    return max(0.0, max_cost - accrued)


def format_usd(amount: float | None) -> str:
    """``$0.42``, ``$12.30``, ``$1,234.50``; ``<$0.01`` for a positive amount that would round to zero (so a
    running machine never reads as free); ``n/a`` for an unknown price."""
    if amount is None:
        return "n/a"
    if 0 < amount < 0.005:
        return "<$0.01"
    sign = "-" if amount < 0 and round(amount, 2) != 0 else ""
    return f"{sign}${abs(amount):,.2f}"


def latest_spot_price(
    history_items: Iterable[Mapping[str, Any]], instance_type: str, az: str | None = None
) -> float | None:
    """The current Linux spot price from ``describe_spot_price_history`` items.

    The newest item per availability zone is the price in force there. With ``az`` that zone's price; without,
    the highest across zones, because nbcloud does not know where EC2 will place the instance and an estimate
    should not undersell. None when nothing matches.
    """
    newest: dict[str, tuple[Any, float]] = {}
    for item in history_items:
        if item.get("InstanceType") != instance_type:
            continue
        if not str(item.get("ProductDescription", "Linux/UNIX")).startswith("Linux/UNIX"):
            continue
        zone = str(item.get("AvailabilityZone", ""))
        if az is not None and zone != az:
            continue
        stamp, price = item.get("Timestamp"), float(item["SpotPrice"])
        if zone not in newest or (stamp is not None and stamp > newest[zone][0]):
            newest[zone] = (stamp, price)
    if not newest:
        return None
    return max(price for _, price in newest.values())


@dataclass(frozen=True)
class CostLine:
    """One instance's row in ``nbcloud cost``: compute accrued in the window plus what its disks cost monthly."""

    name: str
    instance_type: str
    region: str
    lifecycle: str  # "on-demand" | "spot"
    hourly: float | None
    accrued: float | None
    volume_monthly: float = 0.0
    state: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "instance_type": self.instance_type,
            "region": self.region,
            "lifecycle": self.lifecycle,
            "state": self.state,
            "hourly_usd": self.hourly,
            "accrued_usd": None if self.accrued is None else round(self.accrued, 4),
            "volume_monthly_usd": round(self.volume_monthly, 4),
        }


@dataclass(frozen=True)
class CostReport:
    """The result ``nbcloud cost [--since]`` renders. ``complete`` is False when some price was unknown, so the
    total is a lower bound and the CLI must say so."""

    lines: tuple[CostLine, ...]
    now: datetime
    since: datetime | None = None
    prices_as_of: str | None = None
    currency: str = "USD"
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def total_accrued(self) -> float:
        return sum(line.accrued or 0.0 for line in self.lines)

    @property
    def total_volume_monthly(self) -> float:
        return sum(line.volume_monthly for line in self.lines)

    @property
    def complete(self) -> bool:
        return all(line.accrued is not None for line in self.lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(),
            "since": self.since.isoformat() if self.since else None,
            "prices_as_of": self.prices_as_of,
            "currency": self.currency,
            "lines": [line.to_json() for line in self.lines],
            "total_accrued_usd": round(self.total_accrued, 4),
            "total_volume_monthly_usd": round(self.total_volume_monthly, 4),
            "complete": self.complete,
            "notes": list(self.notes),
        }


def cost_line(
    *,
    name: str,
    instance_type: str,
    region: str,
    events: Iterable[tuple[datetime, str]],
    table: PriceTable,
    now: datetime,
    since: datetime | None = None,
    lifecycle: str = "on-demand",
    volumes: Iterable[Any] = (),
    spot_hourly: float | None = None,
    state: str | None = None,
) -> CostLine:
    """Build one ``nbcloud cost`` row from recorded state transitions.

    Periods recorded with a price bill at it; the others at ``spot_hourly`` for spot (the current price, an
    approximation: spot prices move) or the on-demand price, an upper bound, when none was fetched. An unknown
    price gives ``accrued=None``, never 0.
    """
    hourly = table.hourly(instance_type, region)
    if lifecycle == "spot" and spot_hourly is not None:
        hourly = spot_hourly
    periods = running_periods_from_events(events)  # periods with a recorded price bill at it
    return CostLine(
        name=name,
        instance_type=instance_type,
        region=region,
        lifecycle=lifecycle,
        hourly=period_hourly(periods, hourly),
        accrued=accrued_usd(periods, hourly, now, since),
        volume_monthly=idle_volume_monthly(volumes, table, region),
        state=state,
    )
