"""Cost as `status` and `cost` show it: price table × the running periods this machine recorded."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..models import InstanceSpec
from ..state import Record
from .context import Context

__all__ = ["cost_fields", "cost_report"]


def _periods(ctx: Context, record: Record):
    from ..cost import running_periods_from_events

    return running_periods_from_events((at, state) for at, state, _ in ctx.store.events(record.name))


def _hourly(record: Record) -> float | None:
    from ..pricing import load_prices

    if not record.instance_type:
        return None
    return load_prices().hourly(record.instance_type, record.region)


def cost_fields(ctx: Context, record: Record, spec: InstanceSpec, now: datetime) -> dict[str, Any]:
    from ..cost import accrued_usd, budget_remaining

    hourly = _hourly(record)
    accrued = accrued_usd(_periods(ctx, record), hourly, now) if hourly is not None else None
    return {
        "hourly_usd": hourly,
        "accrued_usd": round(accrued, 4) if accrued is not None else None,
        "budget_usd": spec.max_cost_usd,
        "budget_remaining_usd": budget_remaining(spec.max_cost_usd, accrued or 0.0) if spec.max_cost_usd else None,
    }


@dataclass(frozen=True)
class CostSummary:
    since: datetime | None
    lines: list[Any]
    total_accrued_usd: float
    total_volume_monthly_usd: float


def cost_report(ctx: Context, since: datetime | None = None) -> CostSummary:
    from ..cost import CostLine, accrued_usd

    now = datetime.now(UTC)
    lines = []
    for record in ctx.store.all():
        hourly = _hourly(record)
        accrued = accrued_usd(_periods(ctx, record), hourly, now, since) if hourly is not None else None
        lines.append(CostLine(name=record.name, instance_type=record.instance_type or "?", region=record.region,
                              lifecycle=record.lifecycle, hourly=hourly, accrued=accrued, state=record.state))
    return CostSummary(since, lines, round(sum(line.accrued or 0 for line in lines), 4),
                       round(sum(line.volume_monthly for line in lines), 4))
