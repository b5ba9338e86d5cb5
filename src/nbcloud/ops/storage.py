"""Named data volumes: listing with their monthly cost, snapshots, and moving a volume to another zone."""

from __future__ import annotations

from typing import Any

from ..errors import ConflictError, NbcloudError, NotFoundError, RemoteError
from ..models import LAUNCH_TAG, MANAGED_TAG, ROLE_TAG, VOLUME_NAME_TAG, Volume
from ..providers.base import Provider
from .context import Context, Progress, no_progress

__all__ = ["billing_check", "delete_volume", "list_snapshots", "list_volumes", "move_volume", "snapshot_volume",
           "still_billing"]


def list_volumes(ctx: Context, provider_name: str | None, region: str | None,
                 profile: str | None) -> list[dict[str, Any]]:
    from ..money.pricing import load_prices

    provider = ctx.listing_provider(provider_name, region, profile)
    table = load_prices()
    return [{"name": v.tags.get(VOLUME_NAME_TAG), "volume_id": v.volume_id, "size_gb": v.size_gb, "zone": v.zone,
             "state": v.state, "attached_to": v.attached_to, "encrypted": v.encrypted,
             "monthly_usd": round(table.ebs_monthly(v.size_gb, provider.region, v.volume_type), 2)}
            for v in provider.list_volumes()]


def list_snapshots(ctx: Context, provider_name: str | None, region: str | None,
                   profile: str | None) -> list[dict[str, Any]]:
    from ..money.pricing import load_prices

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


def _find(provider: Provider, ref: str) -> Volume:
    """A data volume by its nbcloud name or its volume id."""
    found = [v for v in provider.list_volumes() if ref in (v.tags.get(VOLUME_NAME_TAG), v.volume_id)]
    if not found:
        raise NotFoundError(f"no data volume {ref!r} in {provider.region}", "`nbcloud volumes` lists them")
    return found[0]


def delete_volume(ctx: Context, ref: str, provider_name: str | None, region: str | None,
                  profile: str | None) -> dict[str, Any]:
    """Delete a data volume that no instance uses (the caller has asked the user); an attached one is refused."""
    from ..money.pricing import load_prices

    provider = ctx.provider(provider_name, region, profile)
    volume = _find(provider, ref)
    label = volume.tags.get(VOLUME_NAME_TAG) or volume.volume_id
    if volume.attached_to:
        owner = next((r.name for r in ctx.store.all() if r.instance_id == volume.attached_to), None)
        raise ConflictError(f"data volume {label} ({volume.volume_id}) is attached to "
                            f"{owner or volume.attached_to}",
                            f"`nbcloud down {owner}` first" if owner else "terminate that instance first")
    provider.delete_volume(volume.volume_id)
    monthly = load_prices().ebs_monthly(volume.size_gb, provider.region, volume.volume_type)
    return {"name": label, "volume_id": volume.volume_id, "size_gb": volume.size_gb,
            "monthly_usd_saved": round(monthly, 2)}


def still_billing(provider: Provider) -> list[dict[str, Any]]:
    """What bills with no instance using it: unattached data volumes, data snapshots, baked images (with their
    snapshots), each with its monthly cost and the command that removes it."""
    from ..money.pricing import load_prices

    table = load_prices()
    region = provider.region
    items: list[dict[str, Any]] = []
    for v in provider.list_volumes():
        if v.attached_to is None:
            name = v.tags.get(VOLUME_NAME_TAG) or v.volume_id
            items.append({"kind": "volume", "id": v.volume_id, "name": name, "size_gb": v.size_gb,
                          "monthly_usd": round(table.ebs_monthly(v.size_gb, region, v.volume_type), 2),
                          "remove": f"nbcloud volumes delete {name}"})
    images = provider.list_images()
    in_images = {sid for image in images for sid in image.get("snapshots", [])}
    for image in images:
        items.append({"kind": "image", "id": image["image_id"], "name": image["name"], "size_gb": image["size_gb"],
                      "monthly_usd": round(table.snapshot_monthly(image["size_gb"], region), 2),
                      "remove": f"nbcloud image delete {image['image_id']}"})
    for snap in provider.list_snapshots():
        if snap["snapshot_id"] not in in_images:
            items.append({"kind": "snapshot", "id": snap["snapshot_id"], "name": snap["tags"].get(VOLUME_NAME_TAG),
                          "size_gb": snap["size_gb"],
                          "monthly_usd": round(table.snapshot_monthly(snap["size_gb"], region), 2),
                          "remove": "nbcloud doctor --orphans --fix"})
    return items


def billing_check(ctx: Context, provider_name: str | None, region: str | None,
                  profile: str | None) -> dict[str, Any]:
    """`doctor`'s money check: :func:`still_billing` in the cloud asked for, else in every region the local store
    knows (no cloud call when it knows none and none was asked for). A cloud that cannot be read is a note."""
    if provider_name or region:
        targets = {(provider_name, region, profile)}
    else:
        targets = {(r.provider, r.region, r.profile) for r in ctx.store.all()}
    items: list[dict[str, Any]] = []
    unchecked: list[str] = []
    checked: list[str] = []
    for name, where, prof in sorted(targets, key=str):
        try:
            provider = ctx.provider(name, where, prof)
            checked.append(f"{provider.name}/{provider.region}")  # where it looked, defaults resolved
            items += [i | {"provider": provider.name, "region": provider.region} for i in still_billing(provider)]
        except NbcloudError as exc:
            unchecked.append(f"{name or 'default provider'}/{where or 'default region'}: {exc.message}")
    return {"still_billing": items, "still_billing_monthly_usd": round(sum(i["monthly_usd"] for i in items), 2),
            "unchecked": unchecked, "checked": sorted(set(checked))}


def remove_billing(provider: Provider, item: dict[str, Any]) -> None:
    """Delete one :func:`still_billing` item (the caller has the user's confirmation for it)."""
    if item["kind"] == "volume":
        provider.delete_volume(item["id"])
    elif item["kind"] == "image":
        provider.delete_image(item["id"])
    else:
        provider.delete_snapshot(item["id"])
