"""Cost as `status` and `cost` show it: the price recorded for each running period × the periods this machine saw.

Each running period carries the price it bills at, recorded when it began (:func:`start_price`): the table's
on-demand price, or for a spot instance the spot price in force in its zone at launch (and its later changes, which
`status` records). The same figure goes to the on-instance agent's budget cap (:func:`current_hourly`), so a spot
instance is not stopped early by a cap computed at on-demand prices.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..errors import NbcloudError
from ..models import Instance, InstanceSpec
from ..state import Record
from .context import Context

if TYPE_CHECKING:
    from ..cost import RunningPeriod
    from ..providers.base import Provider

__all__ = ["cost_fields", "current_hourly", "default_hourly", "known_hourly", "launch_price", "periods_of",
           "require_price_for_cap", "start_price"]

log = logging.getLogger(__name__)


def periods_of(ctx: Context, record: Record) -> list[RunningPeriod]:
    from ..cost import running_periods_from_events

    return running_periods_from_events(ctx.store.priced_events(record.name))


def _table_hourly(instance_type: str | None, region: str) -> float | None:
    from ..pricing import load_prices

    if not instance_type:
        return None
    try:
        return load_prices().hourly(instance_type, region)
    except Exception:  # a damaged table is information lost, never a reason to fail a command
        return None


def default_hourly(record: Record) -> float | None:
    """The default for periods recorded without a price (stores from before prices were recorded): on-demand."""
    return _table_hourly(record.instance_type, record.region)


def known_hourly(provider: Provider, instance_type: str) -> float | None:
    """The on-demand price of ``instance_type`` in the provider's region: the table's, else the cloud's live price
    (AWS Pricing API), which is then kept in the user's price table so `status`, `cost` and the agent's cap use it."""
    hourly = _table_hourly(instance_type, provider.region)
    if hourly is not None:
        return hourly
    live = getattr(provider, "on_demand_price", None)
    hourly = live(instance_type) if live is not None else None
    if hourly is not None:
        _remember_price(instance_type, provider.region, hourly)
    return hourly


def _remember_price(instance_type: str, region: str, hourly: float) -> None:
    import json

    from ..config import write_private
    from ..pricing import load_prices, merge_refresh, user_prices_path

    try:
        table = load_prices()
        merged = merge_refresh(table, {"on_demand": {region: {instance_type: hourly}}, "as_of": table.as_of,
                                       "source": table.source})
        write_private(user_prices_path(), json.dumps(merged.to_dict(), indent=1) + "\n")
    except (OSError, ValueError) as exc:  # the price still serves this launch
        log.warning("could not keep the price of %s in %s: %s", instance_type, region, exc)


def require_price_for_cap(provider: Provider, instance_type: str, max_cost_usd: float | None) -> float | None:
    """A budget cap needs the hourly price: unknown (neither the table nor the live API has it) → refused."""
    if max_cost_usd is None:
        return None
    hourly = known_hourly(provider, instance_type)
    if hourly is None:
        from ..errors import UsageError

        raise UsageError(f"--max-cost needs the price of {instance_type} in {provider.region}, which nbcloud does "
                         "not know (not in its price table, and the AWS Price List API did not answer)",
                         "run `nbcloud prices refresh` with pricing:GetProducts allowed, or drop --max-cost")
    return hourly


def launch_price(provider: Provider | None, instance_type: str, region: str, *, spot: bool,
                 zone: str | None = None) -> float | None:
    """What a period that begins now bills at: the spot price in force in ``zone`` for spot (DescribeSpotPriceHistory;
    no zone yet: the highest across the region's zones), else the table's on-demand price. A spot price that cannot
    be read falls back to on-demand: an upper bound, so the estimate and the budget cap err towards stopping early,
    never late."""
    on_demand = _table_hourly(instance_type, region)
    if not spot or provider is None:
        return on_demand
    try:
        price = provider.spot_price(instance_type, zone)
    except NbcloudError as exc:
        log.info("spot price for %s in %s unreadable (%s): using on-demand", instance_type, zone, exc.message)
        price = None
    return price if price is not None else on_demand


def start_price(provider: Provider | None, instance: Instance) -> float | None:
    """:func:`launch_price` of a running instance (its lifecycle and zone as the cloud reports them)."""
    return launch_price(provider, instance.instance_type, instance.region, spot=instance.lifecycle == "spot",
                        zone=instance.zone)


def current_hourly(ctx: Context, name: str) -> float | None:
    """The price the instance bills at now (its latest period's), for the agent's settings and `status`'s $/h."""
    from ..cost import period_hourly

    record = ctx.store.get(name)
    if record is None:
        return None
    return period_hourly(periods_of(ctx, record), default_hourly(record))


def cost_fields(ctx: Context, record: Record, spec: InstanceSpec, now: datetime) -> dict[str, Any]:
    from ..cost import accrued_usd, budget_remaining, period_hourly

    periods = periods_of(ctx, record)
    default = default_hourly(record)
    accrued = accrued_usd(periods, default, now)
    return {
        "hourly_usd": period_hourly(periods, default),
        "accrued_usd": round(accrued, 4) if accrued is not None else None,
        "budget_usd": spec.max_cost_usd,
        "budget_remaining_usd": budget_remaining(spec.max_cost_usd, accrued or 0.0) if spec.max_cost_usd else None,
    }


