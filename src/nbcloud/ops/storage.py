"""Named data volumes: listing with their monthly cost, snapshots, and moving a volume to another zone."""

from __future__ import annotations

from typing import Any

from ..errors import NbcloudError, RemoteError
from ..models import LAUNCH_TAG, MANAGED_TAG, ROLE_TAG, Volume
from ..providers.aws.volumes import VOLUME_NAME_TAG
from ..providers.base import Provider
from .context import Context, Progress, no_progress

__all__ = ["list_snapshots", "list_volumes", "move_volume", "snapshot_volume"]


def list_volumes(ctx: Context, provider_name: str | None, region: str | None,
                 profile: str | None) -> list[dict[str, Any]]:
    from ..pricing import load_prices

    provider = ctx.listing_provider(provider_name, region, profile)
    table = load_prices()
    return [{"name": v.tags.get(VOLUME_NAME_TAG), "volume_id": v.volume_id, "size_gb": v.size_gb, "zone": v.zone,
             "state": v.state, "attached_to": v.attached_to, "encrypted": v.encrypted,
             "monthly_usd": round(table.ebs_monthly(v.size_gb, provider.region, v.volume_type), 2)}
            for v in provider.list_volumes()]


def list_snapshots(ctx: Context, provider_name: str | None, region: str | None,
                   profile: str | None) -> list[dict[str, Any]]:
    from ..pricing import load_prices

    provider = ctx.listing_provider(provider_name, region, profile)
    table = load_prices()
    return [{"name": s["tags"].get(VOLUME_NAME_TAG), **{k: v for k, v in s.items() if k != "tags"},
             "monthly_usd": round(table.snapshot_monthly(s["size_gb"], provider.region), 2)}
            for s in provider.list_snapshots()]


def _snapshot_tags(volume: Volume, purpose: str) -> dict[str, str]:
    tags = {k: v for k, v in volume.tags.items() if k != LAUNCH_TAG and not k.startswith("aws:")}
    return tags | {MANAGED_TAG: "true", ROLE_TAG: "data-snapshot", VOLUME_NAME_TAG: volume.name or volume.volume_id,
                   "nbcloud:snapshot-of": volume.volume_id, "nbcloud:purpose": purpose}


def snapshot_volume(provider: Provider, volume: Volume, purpose: str) -> str:
    """A completed, tagged snapshot of ``volume`` (waits; an unfinished snapshot is removed on failure)."""
    label = volume.name or volume.volume_id
    return provider.snapshot_volume(volume.volume_id, f"nbcloud {purpose}: data volume {label}",
                                    _snapshot_tags(volume, purpose))


def move_volume(provider: Provider, volume: Volume, zone: str, progress: Progress = no_progress) -> Volume:
    """Move a data volume to ``zone``: snapshot → new volume there (same tags) → delete the old one.

    The old volume goes only once the new one exists; the snapshot is deleted at the end either way (on a failure
    before the new volume exists, the old volume is untouched).
    """
    label = volume.name or volume.volume_id
    progress(f"data volume {label} is in {volume.zone}, not {zone}: moving it through a snapshot "
             f"({volume.size_gb} GB; 1/3 snapshot of {volume.volume_id})")
    snapshot_id = snapshot_volume(provider, volume, f"move to {zone}")
    try:
        progress(f"moving {label}: 2/3 new volume in {zone} from {snapshot_id}")
        tags = {k: v for k, v in volume.tags.items() if not k.startswith("aws:")}
        moved = provider.create_volume_from_snapshot(snapshot_id, zone, tags)
        progress(f"moving {label}: 3/3 deleting the old volume {volume.volume_id}")
        try:
            provider.delete_volume(volume.volume_id)
        except NbcloudError as exc:
            raise RemoteError(f"data volume {label} was copied to {moved.volume_id} in {zone} but the old "
                              f"{volume.volume_id} could not be deleted: {exc.message}",
                              f"delete {volume.volume_id} by hand (both carry the name {label})") from exc
    finally:
        provider.delete_snapshot(snapshot_id)
    progress(f"data volume {label} is now {moved.volume_id} in {zone}")
    return moved
