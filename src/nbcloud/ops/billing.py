"""`nbcloud cost`: what each instance this machine made has cost, the store first brought up to date."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import NbcloudError
from ..money.cost import CostLine, accrued_usd, period_hourly
from ..money.quotes import default_hourly
from ..providers.base import manages_machines
from ..state import Record
from .context import Context
from .costs import periods_of
from .instances import sync_record

__all__ = ["CostSummary", "cost_report"]


@dataclass(frozen=True)
class CostSummary:
    since: datetime | None
    lines: list[Any]
    total_accrued_usd: float
    total_volume_monthly_usd: float
    notes: list[str] = field(default_factory=list)


def _refresh_billing(ctx: Context) -> list[str]:
    """Bring the store up to date for instances it believes billed, before `cost` adds them up.

    Without this, a stop the agent made (idle stop, budget cap) while nobody ran `status` would count as running
    until now. One DescribeInstances per (provider, region); the stop is recorded at the cloud's own stop time.
    A cloud that cannot be reached leaves the store's figures, with a note saying they may run long.
    """
    groups: dict[tuple[str, str, str | None], list[Record]] = defaultdict(list)
    for record in ctx.store.all():
        if record.state in {"running", "pending", "stopping", "shutting-down"}:
            groups[(record.provider, record.region, record.profile)].append(record)
    notes = []
    for (provider_name, region, profile), members in groups.items():
        try:
            provider = ctx.provider(provider_name, region, profile)
            if not manages_machines(provider):
                continue  # a machine the user already had: nbcloud does not bill it and need not probe it
            live = {i.name: i for i in provider.list_instances()}
        except NbcloudError as exc:
            notes.append(f"{provider_name}/{region} unreachable ({exc.message}): "
                         f"{', '.join(r.name for r in members)} counted as running until now")
            continue
        for record in members:
            sync_record(ctx, record, live.get(record.name), provider)
    return notes


def cost_report(ctx: Context, since: datetime | None = None, refresh: bool = True) -> CostSummary:
    notes = _refresh_billing(ctx) if refresh else []
    now = datetime.now(UTC)
    lines = []
    for record in ctx.store.all():
        periods = periods_of(ctx, record)
        default = default_hourly(record)
        lines.append(CostLine(name=record.name, instance_type=record.instance_type or "?", region=record.region,
                              lifecycle=record.lifecycle, hourly=period_hourly(periods, default),
                              accrued=accrued_usd(periods, default, now, since), state=record.state))
    return CostSummary(since, lines, round(sum(line.accrued or 0 for line in lines), 4),
                       round(sum(line.volume_monthly for line in lines), 4), notes)
