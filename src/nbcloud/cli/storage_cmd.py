"""volumes and image: data that outlives instances, and baked machine images."""

from __future__ import annotations

import click

from .output import emit, json_option, table


def _ctx():
    from ..ops import Context

    return Context.create()


@click.command()
@click.option("--provider", type=click.Choice(["aws", "sandbox"]), default=None)
@click.option("--region", default=None)
@click.option("--profile", default=None)
@json_option
def volumes(provider: str | None, region: str | None, profile: str | None, as_json: bool) -> None:
    """List persistent data volumes with size, zone and monthly cost."""
    from ..ops.storage import list_volumes

    found = list_volumes(_ctx(), provider, region, profile)
    emit(found, as_json, lambda vs: table([
        {"name": v["name"], "id": v["volume_id"], "size": f"{v['size_gb']} GB", "zone": v["zone"],
         "state": v["state"], "attached": v["attached_to"], "$/month": v["monthly_usd"]} for v in vs],
        ["name", "id", "size", "zone", "state", "attached", "$/month"]) or "no data volumes")


@click.group()
def image() -> None:
    """Bake, list and delete machine images."""
