"""`up` of a new instance from a baked image to Jupyter vs `start` of a stopped instance to Jupyter (sandbox).

The reference is the fastest way back to a working Jupyter nbcloud has (the disk is there, nothing to install);
a baked image should come close (goal: ratio ≤ 1.3). One run of each, library calls (no CLI start-up), in a
temporary NBCLOUD_HOME and sandbox on 10.213.0.0/16 (or $NBCLOUD_BENCH_SUBNET), reset at the end.

Prints: seconds of both, the phases of the `up` (running, ssh, Jupyter), the bake time, and the ratio.
Run as root: python bench/bench_images.py
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="nbbench-images-"))
    os.environ["NBCLOUD_HOME"] = str(tmp / "home")
    os.environ["NBCLOUD_USER_SSH_CONFIG"] = str(tmp / "ssh_config")
    os.environ["NBCLOUD_SANDBOX_SUBNET"] = os.environ.get("NBCLOUD_BENCH_SUBNET", "10.213.0.0/16")
    os.environ["NBCLOUD_SANDBOX_DIR"] = str(tmp / "sandbox")
    os.environ["NBCLOUD_QUIET"] = "1"
    from nbcloud import ops
    from nbcloud.models import InstanceSpec
    from nbcloud.ops import images
    from nbcloud.sandbox import client as sandbox

    sandbox.start()
    ctx = ops.Context.create()
    try:
        ops.up(ctx, InstanceSpec(name="source", idle_stop_seconds=None), provider_name="sandbox")
        t0 = time.monotonic()
        baked = images.bake(ctx, "source", "bench-img")
        bake_seconds = time.monotonic() - t0

        ops.stop_instance(ctx, "source")
        t0 = time.monotonic()
        ops.start_instance(ctx, "source", wait_jupyter=True)
        start_seconds = time.monotonic() - t0

        t0 = time.monotonic()
        result = ops.up(ctx, InstanceSpec(name="clone", image="bench-img", idle_stop_seconds=None),
                        provider_name="sandbox")
        up_seconds = time.monotonic() - t0
        phases = ", ".join(f"{k} {v:.2f} s" for k, v in result.seconds.items())
        print(f"bake (prepare, stop, CreateImage, start again): {bake_seconds:.2f} s  ({baked.image_id})")
        print(f"start of the stopped instance to Jupyter:       {start_seconds:.2f} s")
        print(f"up from the baked image to Jupyter:             {up_seconds:.2f} s  ({phases})")
        print(f"ratio up(baked) / start: {up_seconds / start_seconds:.2f}  (goal ≤ 1.3)")
        for name in ("clone", "source"):
            ops.down(ctx, name)
        images.delete_image(ctx, "bench-img", "sandbox")
    finally:
        sandbox.reset()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
