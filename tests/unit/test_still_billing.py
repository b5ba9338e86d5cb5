"""Issue 14 #4 without a cloud: `doctor`'s "still billing" list (unattached volumes, images, snapshots no image holds,
each with its monthly cost and the command that removes it) and where it looked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nbcloud.models import VOLUME_NAME_TAG, Volume


class _Cloud:
    name, region = "sandbox", "us-east-1"

    def list_volumes(self) -> list[Volume]:
        return [Volume("vol-free", "v9", 100, "us-east-1a", "available", tags={VOLUME_NAME_TAG: "v9"}),
                Volume("vol-used", "v8", 50, "us-east-1a", "in-use", attached_to="i-1", tags={VOLUME_NAME_TAG: "v8"})]

    def list_images(self) -> list[dict[str, Any]]:
        return [{"image_id": "ami-1", "name": "nbcloud-img", "size_gb": 30, "snapshots": ["snap-of-image"]}]

    def list_snapshots(self) -> list[dict[str, Any]]:
        return [{"snapshot_id": "snap-of-image", "size_gb": 30, "tags": {}},
                {"snapshot_id": "snap-data", "size_gb": 20, "tags": {VOLUME_NAME_TAG: "v7"}}]


def test_still_billing_lists_unused_volumes_images_and_loose_snapshots(nbcloud_home: Path) -> None:
    from nbcloud.ops.storage import still_billing

    items = {i["id"]: i for i in still_billing(_Cloud())}  # type: ignore[arg-type]
    assert set(items) == {"vol-free", "ami-1", "snap-data"}, "attached volumes and an image's own snapshot excluded"
    assert items["vol-free"]["kind"] == "volume" and items["vol-free"]["remove"] == "nbcloud volumes delete v9"
    assert items["ami-1"]["kind"] == "image" and items["snap-data"]["kind"] == "snapshot"
    assert all(i["monthly_usd"] > 0 for i in items.values())


def test_doctor_says_which_region_it_checked(nbcloud_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`doctor --provider sandbox` reported checked: ['sandbox/-'], the region it was not given, not the one read."""
    from nbcloud.ops import Context
    from nbcloud.ops.storage import billing_check

    ctx = Context.create()
    monkeypatch.setattr(ctx, "provider", lambda *_a, **_k: _Cloud())
    found = billing_check(ctx, "sandbox", None, None)
    assert found["checked"] == ["sandbox/us-east-1"]
    assert found["still_billing_monthly_usd"] == round(sum(i["monthly_usd"] for i in found["still_billing"]), 2)
    assert {i["region"] for i in found["still_billing"]} == {"us-east-1"}
