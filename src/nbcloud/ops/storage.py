"""Named data volumes and (later) baked images."""

from __future__ import annotations

from typing import Any

from ..providers.aws.volumes import VOLUME_NAME_TAG
from .context import Context

__all__ = ["list_volumes"]


def list_volumes(ctx: Context, provider_name: str | None, region: str | None,
                 profile: str | None) -> list[dict[str, Any]]:
    from ..pricing import load_prices

    provider = ctx.provider(provider_name, region, profile)
    table = load_prices()
    return [{"name": v.tags.get(VOLUME_NAME_TAG), "volume_id": v.volume_id, "size_gb": v.size_gb, "zone": v.zone,
             "state": v.state, "attached_to": v.attached_to, "encrypted": v.encrypted,
             "monthly_usd": round(table.ebs_monthly(v.size_gb, provider.region, v.volume_type), 2)}
            for v in provider.list_volumes()]
