"""Baked images: an instance's root disk (with its Jupyter environment) as an AMI that `up --image NAME` boots.

`bake` prepares the instance so the image carries no secret and no per-instance state (the Jupyter token, TLS key,
password hash and agent state go; the venv stays; ``/var/lib/nbcloud/baked`` marks it), stops it, makes the image
(its root snapshot is encrypted like the root volume; the data volume is left out), waits until it is available,
and brings the instance back as it was: started, bootstrapped again (the install step is skipped) and given its
secrets again. A new instance of the image gets new host keys from its user-data and new secrets from the client;
the source instance makes itself a new host key after the restart, so the one the image carries is dead.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConflictError, NotFoundError, UsageError
from ..models import IMAGE_NAME_TAG, MANAGED_TAG, ROLE_TAG
from ..providers.base import Provider
from ..ssh import session
from .context import Context, Progress, no_progress

__all__ = ["PREPARE_SCRIPT", "BakeResult", "bake", "delete_image", "list_images"]

_IMAGE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
UNITS = ("nbcloud-jupyter.service", "nbcloud-gateway.service", "nbcloud-agent.service", "nbcloud-data.service")

# Runs as root on the instance right before it is stopped for CreateImage. Units are disabled so that an instance
# of the image starts nothing until its own bootstrap has run (with its own data volume and settings); Jupyter's
# stays enabled: its launcher imports the server at boot and starts it only once this instance's bootstrap is done
# and its token is there, which takes ~2 s off `up` from the image.
PREPARE_SCRIPT = f"""set -eu
for u in {' '.join(u for u in UNITS if u != "nbcloud-jupyter.service")}; do
  systemctl disable "$u" >/dev/null 2>&1 || true
done
for u in {' '.join(UNITS)}; do systemctl stop "$u" >/dev/null 2>&1 || true; done
rm -rf /home/*/.config/nbcloud /home/*/.local/share/jupyter/runtime
rm -f /var/lib/nbcloud/bootstrap.done /var/lib/nbcloud/agent-state.json /var/lib/nbcloud/interruption.json
mkdir -p /var/lib/nbcloud
date -u +%FT%TZ > /var/lib/nbcloud/baked
sync
echo nbcloud: ready to bake
"""


@dataclass(frozen=True)
class BakeResult:
    name: str
    image_name: str
    image_id: str
    instance_id: str
    restarted: bool
    seconds: dict[str, float] = field(default_factory=dict)


def _check_name(image_name: str) -> str:
    if not _IMAGE_NAME.match(image_name) or image_name.startswith("ami-") or image_name in ("ubuntu", "dlami"):
        raise UsageError(f"invalid image name {image_name!r}",
                         "use lowercase letters, digits and dashes, starting with a letter (not ubuntu/dlami/ami-…)")
    return image_name


def _alias(name: str) -> str:
    return f"nb-{name}"


def bake(ctx: Context, name: str, image_name: str | None = None, progress: Progress = no_progress) -> BakeResult:
    from .hostkey import rotate_host_key
    from .instances import DATA_DEVICE, install_secrets, stored_spec, wait_ready
    from .lifecycle import start_instance, stop_instance

    image_name = _check_name(name if image_name is None else image_name)  # `--image-name ''` is refused, not replaced
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    with ctx.name_lock(name):
        record = ctx.record(name)
        ctx.key_path(name)
        provider = ctx.provider_for(record)
        instance = provider.find(name)
        if instance is None:
            raise NotFoundError(f"instance {name!r} no longer exists", f"`nbcloud up {name}` makes a new one")
        if instance.lifecycle == "spot":
            raise ConflictError(f"{name} is a spot instance, which cannot be stopped for baking",
                                "bake an on-demand instance (`nbcloud up NAME` without --spot) and use the image "
                                "for spot instances")
        if any(i["name"] == image_name for i in provider.list_images()):
            raise ConflictError(f"an image named {image_name!r} exists already",
                                f"`nbcloud image delete {image_name}` first, or pass --image-name")
        was_running = instance.state in ("running", "pending")
        if not was_running:
            progress(f"starting {name} to clear its secrets before baking")
            start_instance(ctx, name, progress=progress, wait_jupyter=False)
        progress(f"preparing {name}: removing secrets and per-instance state (the environment stays)")
        session.run(ctx.paths.ssh_config, _alias(name), "sudo bash -s", input=PREPARE_SCRIPT.encode(), timeout=120)
        stop_instance(ctx, name, progress=progress)
        timings["stopped"] = time.monotonic() - t0
        progress(f"creating image {image_name} from {instance.instance_id} (waiting until it is available)")
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        tags = {IMAGE_NAME_TAG: image_name, MANAGED_TAG: "true", ROLE_TAG: "image", "nbcloud:source": name}
        image_id = provider.create_image(instance.instance_id, f"nbcloud-{image_name}-{stamp}", tags,
                                         exclude_devices=(DATA_DEVICE,))
        timings["image"] = time.monotonic() - t0
        if was_running:
            progress(f"starting {name} again")
            start_instance(ctx, name, progress=progress, wait_jupyter=False)
            session.run(ctx.paths.ssh_config, _alias(name), "sudo bash /opt/nbcloud/bootstrap.sh", timeout=900)
            install_secrets(ctx, name, stored_spec(ctx.record(name)))
            # the image holds this instance's host key: retire it, so no copy of the image can pose as this one
            progress(f"replacing {name}'s host key (the image has a copy of the old one)")
            rotate_host_key(ctx, name)
            wait_ready(ctx, name, 600, progress)
            timings["restarted"] = time.monotonic() - t0
    return BakeResult(name, image_name, image_id, instance.instance_id, was_running, timings)


def _provider(ctx: Context, provider_name: str | None, region: str | None, profile: str | None) -> Provider:
    return ctx.listing_provider(provider_name, region, profile)


def list_images(ctx: Context, provider_name: str | None = None, region: str | None = None,
                profile: str | None = None) -> list[dict[str, Any]]:
    """Baked images with the monthly cost of their snapshots."""
    from ..money.pricing import load_prices

    provider = _provider(ctx, provider_name, region, profile)
    table = load_prices()
    return [image | {"monthly_usd": round(table.snapshot_monthly(image["size_gb"], provider.region), 2)}
            for image in provider.list_images()]


def delete_image(ctx: Context, ref: str, provider_name: str | None = None, region: str | None = None,
                 profile: str | None = None) -> dict[str, Any]:
    """Deregister every image named ``ref`` (or the AMI ``ref``) and delete its snapshots."""
    provider = _provider(ctx, provider_name, region, profile)
    found = [i for i in provider.list_images() if ref in (i["name"], i["image_id"])]
    if not found:
        raise NotFoundError(f"no baked image {ref!r} in {provider.region}", "`nbcloud image list` shows them")
    deleted: list[str] = []
    snapshots: list[str] = []
    for image in found:
        snapshots += provider.delete_image(image["image_id"])
        deleted.append(image["image_id"])
    return {"name": found[0]["name"], "deregistered": deleted, "deleted_snapshots": snapshots}
