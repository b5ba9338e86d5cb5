"""Cost as `status` and `cost` show it: the price recorded for each running period × the periods this machine saw.

The store's side of money (its priced events); the arithmetic is :mod:`nbcloud.money.cost`, the quotes
:mod:`nbcloud.money.quotes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ..models import InstanceSpec
from ..money.cost import RunningPeriod, accrued_usd, budget_remaining, period_hourly, running_periods_from_events
from ..money.pricing import PriceTable, load_prices, user_prices_path
from ..money.quotes import default_hourly
from ..providers.base import PriceSource
from ..state import Record
from .context import Context

__all__ = ["cost_fields", "current_hourly", "periods_of", "refresh_prices"]


def periods_of(ctx: Context, record: Record) -> list[RunningPeriod]:
    return running_periods_from_events(ctx.store.priced_events(record.name))


def current_hourly(ctx: Context, name: str) -> float | None:
    """The price the instance bills at now (its latest period's), for the agent's settings and `status`'s $/h."""
    record = ctx.store.get(name)
    if record is None:
        return None
    return period_hourly(periods_of(ctx, record), default_hourly(record))


def cost_fields(ctx: Context, record: Record, spec: InstanceSpec, now: datetime) -> dict[str, Any]:
    periods = periods_of(ctx, record)
    default = default_hourly(record)
    accrued = accrued_usd(periods, default, now)
    return {
        "hourly_usd": period_hourly(periods, default),
        "accrued_usd": round(accrued, 4) if accrued is not None else None,
        "budget_usd": spec.max_cost_usd,
        "budget_remaining_usd": budget_remaining(spec.max_cost_usd, accrued or 0.0) if spec.max_cost_usd else None,
    }


def refresh_prices(source: PriceSource, regions: Sequence[str]) -> PriceTable:
    """`nbcloud prices refresh`: the live prices of ``source`` (``providers.registry.price_source``; default
    regions: those the table has) written to the user's price table, which wins over the shipped snapshot."""
    return source.refresh_prices(user_prices_path(), list(regions) or load_prices().regions())
