"""os-mode sandbox: an EBS volume attached to a running instance → mounted at ~/data by nbcloud's data unit.

Prints, in one run, on one instance made by `nbcloud up NAME --data-volume NAME:1` (the first attach formats it):
  * AttachVolume (API call made) → ~/data mounted, the data unit (`bootstrap.sh mount-data`) already waiting for
    the device inside, as the unit does at boot; --runs cycles of unmount, DetachVolume, AttachVolume
  * the same with the unit started only after the attach (the device is there by then: unit and ssh overhead)

Run as root, after `nbcloud sandbox image build`:
  python bench/bench_os_volumes.py [--runs 5] [--subnet 10.246.0.0/16]
Its own sandbox (reset at the end, with `losetup -a` checked for loop devices it left), so it runs beside another.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.helpers import World, wait_until  # noqa: E402

NAME = "benchvol"
MOUNTED = "findmnt -n ~/data >/dev/null && date +%s.%N"  # the instance's clock is the host's (one kernel)


def cycle(world: World, ec2, volume_id: str, instance_id: str, unit_first: bool) -> float:
    """One detach and attach; the seconds from the attach call to ~/data mounted (read inside)."""
    world.ssh_out(NAME, "sudo umount ~/data")
    ec2.detach_volume(VolumeId=volume_id, InstanceId=instance_id)
    wait_until(lambda: ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["State"] == "available", 30)
    time.sleep(1.0)  # the sandbox took the device away (its reconciler follows the API)
    unit = f"sudo systemctl start nbcloud-data.service && {MOUNTED}"
    waiting = None
    if unit_first:
        waiting = subprocess.Popen(["ssh", "-F", str(world.user_ssh_config), "-o", "BatchMode=yes", f"nb-{NAME}",
                                    unit], stdout=subprocess.PIPE, text=True)
        time.sleep(2.0)  # the unit is polling for the device by now
    start = time.time()
    ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
    out = waiting.communicate(timeout=120)[0] if waiting else world.ssh_out(NAME, unit, timeout=120)
    return float(out.split()[-1]) - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--subnet", default=os.environ.get("NBCLOUD_BENCH_SUBNET", "10.246.0.0/16"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("os mode needs root")
    from nbcloud.sandbox import client

    with tempfile.TemporaryDirectory(prefix="bench-os-volumes-") as tmp:
        sandbox_dir = Path(tmp) / "sandbox"
        info = client.start(sandbox_dir, subnet=args.subnet, os_mode=True, timeout=120)
        world = World.under(Path(tmp), info)
        try:
            start = time.monotonic()
            made = world.up(NAME, "--data-volume", f"{NAME}:1")
            print(f"up with a new 1 GiB data volume (formatted on first attach): {time.monotonic() - start:.1f} s")
            ec2 = world.ec2()
            iid = made["instance_id"]
            volume_id = next(v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]
                             if v["Size"] == 1 and v["Attachments"])
            for unit_first, label in ((True, "data unit waiting"), (False, "data unit started after")):
                times = [cycle(world, ec2, volume_id, iid, unit_first) for _ in range(args.runs)]
                print(f"AttachVolume → ~/data mounted ({label}): median {statistics.median(times):.2f} s "
                      f"(runs: {', '.join(f'{t:.2f}' for t in times)})")
        finally:
            world.down_all()
            client.reset(sandbox_dir)
            rows = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout.splitlines()
            left = [row for row in rows if str(sandbox_dir.resolve()) in row]
            print(f"loop devices left: {len(left)}")


if __name__ == "__main__":
    main()
