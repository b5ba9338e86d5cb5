"""Quoting a price: the table's on-demand $/h, the cloud's live price when the table lacks it, the spot price in force.

Each running period carries the price it bills at, recorded when it began (:func:`start_price`): the table's
on-demand price, or for a spot instance the spot price in force in its zone at launch (and its later changes, which
`status` records). The same figure goes to the on-instance agent's budget cap, so a spot instance is not stopped
early by a cap computed at on-demand prices. The cloud is reached only through the provider interface.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from ..config import write_private
from ..errors import NbcloudError, UsageError
from ..models import Instance
from ..state import Record
from .pricing import load_prices, merge_refresh, user_prices_path

if TYPE_CHECKING:
    from ..providers.base import Provider

__all__ = ["default_hourly", "known_hourly", "launch_price", "require_price_for_cap", "start_price"]

log = logging.getLogger(__name__)


def _table_hourly(instance_type: str | None, region: str) -> float | None:
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
