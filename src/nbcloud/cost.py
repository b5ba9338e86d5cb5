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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .pricing import PriceTable

__all__ = [
    "MIN_BILLED_SECONDS",
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
    "running_periods_from_events",
]

#: Linux on-demand/spot instances bill at least one minute per start.
MIN_BILLED_SECONDS = 60.0

_BILLED_STATES = frozenset({"running"})
_UNBILLED_STATES = frozenset({"pending", "stopping", "stopped", "shutting-down", "terminated"})


@dataclass(frozen=True)
class RunningPeriod:
    """One stretch in ``running``; ``end`` None means it is running still (use ``now``). Use aware UTC times."""

    start: datetime
    end: datetime | None = None

    def seconds(self, now: datetime) -> float:
        end = self.end if self.end is not None else now
        return max(0.0, (min(end, now) - self.start).total_seconds())


def running_periods_from_events(events: Iterable[tuple[datetime, str]]) -> list[RunningPeriod]:
    """Fold ``(timestamp, state)`` transitions into the periods the instance was billed.

    The client records transitions twice over (its own start/stop calls, then the states status refreshes see),
    so repeats are normal: a second ``running`` inside an open period is ignored and the earliest one counts (the
    estimate errs towards more cost, never less). Unknown states are skipped. Events need not be sorted.
    """
    periods: list[RunningPeriod] = []
    open_since: datetime | None = None
    for when, state in sorted(events, key=lambda e: e[0]):
        state = state.lower()
        if state in _BILLED_STATES:
            if open_since is None:
                open_since = when
        elif state in _UNBILLED_STATES and open_since is not None:
            periods.append(RunningPeriod(open_since, when))
            open_since = None
    if open_since is not None:
        periods.append(RunningPeriod(open_since, None))
    return periods


def billed_seconds(periods: Iterable[RunningPeriod], now: datetime, since: datetime | None = None) -> float:
    """Seconds billed across ``periods`` up to ``now``: per second, 60 s minimum per period.

    With ``since``, only the part of each period after ``since`` counts; a period cut by ``since`` started
    earlier and already paid its minimum, so the minimum applies only to periods that start inside the window.
    """
    total = 0.0
    for period in periods:
        if period.start >= now:
            continue
        if since is not None and period.start < since:
            end = period.end if period.end is not None else now
            if end <= since:
                continue
            total += RunningPeriod(since, end).seconds(now)
        else:
            total += max(MIN_BILLED_SECONDS, period.seconds(now))
    return total


def accrued_usd(
    periods: Iterable[RunningPeriod], hourly: float, now: datetime, since: datetime | None = None
) -> float:
    """Dollars accrued by running time only (a stopped stretch costs nothing for compute).

    Linux on-demand is billed per second with a 60-second minimum per start (spot likewise), so each period
    counts ``max(60, seconds)``. Unrounded: round only for display (``format_usd``) so totals do not drift.
    """
    return billed_seconds(periods, now, since) * hourly / 3600.0


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

    Spot uses ``spot_hourly`` (the current price, an approximation: spot prices move) and falls back to the
    on-demand price, an upper bound, when none was fetched. An unknown price gives ``accrued=None``, never 0.
    """
    hourly = table.hourly(instance_type, region)
    if lifecycle == "spot" and spot_hourly is not None:
        hourly = spot_hourly
    periods = running_periods_from_events(events)
    return CostLine(
        name=name,
        instance_type=instance_type,
        region=region,
        lifecycle=lifecycle,
        hourly=hourly,
        accrued=None if hourly is None else accrued_usd(periods, hourly, now, since),
        volume_monthly=idle_volume_monthly(volumes, table, region),
        state=state,
    )
