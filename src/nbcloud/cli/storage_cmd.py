"""volumes and image: data that outlives instances, and baked machine images."""

from __future__ import annotations

import click

from ..providers.registry import cloud_names
from .complete import instance_names
from .output import emit, json_option, progress, table


def _ctx():
    from ..ops import Context

    return Context.create()


@click.group(invoke_without_command=True)
@click.option("--provider", type=click.Choice(cloud_names()), default=None)
@click.option("--region", default=None)
@click.option("--profile", default=None)
@json_option
@click.pass_context
def volumes(ctx: click.Context, provider: str | None, region: str | None, profile: str | None,
            as_json: bool) -> None:
    """List persistent data volumes with size, zone and monthly cost (`volumes delete NAME` deletes one)."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"provider": provider, "region": region, "profile": profile}
        return
    from ..ops.storage import list_volumes

    found = list_volumes(_ctx(), provider, region, profile)
    emit(found, as_json, lambda vs: table([
        {"name": v["name"], "id": v["volume_id"], "size": f"{v['size_gb']} GB", "zone": v["zone"],
         "state": v["state"], "attached": v["attached_to"], "$/month": v["monthly_usd"]} for v in vs],
        ["name", "id", "size", "zone", "state", "attached", "$/month"]) or "no data volumes")


@volumes.command("delete")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask (needed without a terminal).")
@click.option("--provider", type=click.Choice(cloud_names()), default=None)
@click.option("--region", default=None)
@click.option("--profile", default=None)
@json_option
@click.pass_context
def volumes_delete(ctx: click.Context, name: str, yes: bool, provider: str | None, region: str | None,
                   profile: str | None, as_json: bool) -> None:
    """Delete the data volume NAME (or vol-…) for good; an attached volume is refused."""
    import sys

    from ..errors import UsageError
    from ..ops.storage import delete_volume

    parent = ctx.obj or {}
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"deleting data volume {name} loses its data for good", "confirm with --yes")
        click.confirm(f"Delete data volume {name} and everything on it for good?", abort=True, err=True)
    result = delete_volume(_ctx(), name, provider or parent.get("provider"), region or parent.get("region"),
                           profile or parent.get("profile"))
    emit(result, as_json, lambda r: f"deleted data volume {r['name']} ({r['volume_id']}, {r['size_gb']} GB); "
         f"${r['monthly_usd_saved']:.2f}/month no longer billed")


@click.group()
def image() -> None:
    """Bake, list and delete machine images."""


@image.command("bake")
@click.argument("name", shell_complete=instance_names)
@click.option("--image-name", default=None, help="Name of the image (default: the instance's name).")
@json_option
def image_bake(name: str, image_name: str | None, as_json: bool) -> None:
    """Stop NAME, make an image of its disk (Jupyter environment included), and start it again."""
    from ..ops.images import bake

    with progress(f"baking {name}", as_json) as step:
        result = bake(_ctx(), name, image_name, progress=step)
    emit(result, as_json, lambda r: f"image {r.image_name} ({r.image_id}) baked from {r.instance_id}; "
         f"use it with `nbcloud up NEWNAME --image {r.image_name}`")


@image.command("list")
@click.option("--provider", type=click.Choice(cloud_names()), default=None)
@click.option("--region", default=None)
@click.option("--profile", default=None)
@json_option
def image_list(provider: str | None, region: str | None, profile: str | None, as_json: bool) -> None:
    """List baked images with the monthly cost of their snapshots."""
    from ..ops.images import list_images

    found = list_images(_ctx(), provider, region, profile)
    emit(found, as_json, lambda items: table([
        {"name": i["name"], "id": i["image_id"], "state": i["state"], "from": i["source"], "created": i["created"],
         "$/month": i["monthly_usd"]} for i in items], ["name", "id", "state", "from", "created", "$/month"])
        or "no baked images; `nbcloud image bake NAME` makes one")


@image.command("delete")
@click.argument("ref")
@click.option("--provider", type=click.Choice(cloud_names()), default=None)
@click.option("--region", default=None)
@click.option("--profile", default=None)
@json_option
def image_delete(ref: str, provider: str | None, region: str | None, profile: str | None, as_json: bool) -> None:
    """Deregister an image (by name or AMI id) and delete its snapshots."""
    from ..ops.images import delete_image

    result = delete_image(_ctx(), ref, provider, region, profile)
    emit(result, as_json, lambda r: f"deregistered {', '.join(r['deregistered'])}; deleted snapshots "
         f"{', '.join(r['deleted_snapshots']) or '-'}")
