"""os-mode sandbox (real OS in systemd-nspawn): boot to SSH against a bare nspawn boot of the same root filesystem,
and `nbcloud up` → Jupyter answering.

Prints, in one run:
  * os mode: RunInstances (key pair only) → `ssh ubuntu@ip true` succeeds (cloud-init put the key there from IMDS)
  * reference: an overlay over the same image + `systemd-nspawn -b` in a fresh namespace (host key and root's key
    written beforehand, cloud-init disabled) → `ssh root@ip true` succeeds
  * the ratio of the medians (issue 16's goal: ≤ 1.3)
  * `nbcloud up NAME --no-connect` (returns once Jupyter answers) on the same sandbox, --up-runs times

Run as root, after `nbcloud sandbox image build`:
  python bench/bench_sandbox_os.py [--runs 5] [--up-runs 1] [--subnet 10.244.0.0/16] [--bare-subnet 10.245.0.0/24]
Its own sandbox (reset at the end) and its own reference namespaces (names carry this process's id), each subnet
behind a blackhole route, so it runs beside another sandbox.
"""

from __future__ import annotations

import argparse
import json
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

from tests.helpers import UBUNTU, keypair, pinned_ssh  # noqa: E402


def wait_ssh(address: str, user: str, key: Path, known_hosts: Path | None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if known_hosts is not None:
            argv = pinned_ssh(key, known_hosts, connect_timeout=2)
        else:  # os mode: cloud-init makes the host keys (no user-data here); the key is what is measured
            argv = ["ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                    "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=2", "-o", "LogLevel=ERROR"]
        if subprocess.run([*argv, f"{user}@{address}", "true"], capture_output=True).returncode == 0:
            return
        time.sleep(0.05)
    raise SystemExit(f"ssh to {address} never succeeded")


def os_boot(ec2, ami: str, tmp: Path, index: int) -> float:
    private, public = keypair()
    key = tmp / f"key{index}"
    key.write_text(private)
    key.chmod(0o600)
    ec2.import_key_pair(KeyName=f"bench{index}", PublicKeyMaterial=public.encode())
    start = time.monotonic()
    inst = ec2.run_instances(ImageId=ami, InstanceType="t3.micro", MinCount=1, MaxCount=1,
                             KeyName=f"bench{index}")["Instances"][0]
    wait_ssh(inst["PublicIpAddress"], "ubuntu", key, None)
    elapsed = time.monotonic() - start
    ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[inst["InstanceId"]],
                                               WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    return elapsed


def bare_boot(network, image: Path, tmp: Path, index: int) -> float:
    """The same image booted by nspawn alone: what os mode adds (cloud-init, IMDS, the daemon) is the difference."""
    from nbcloud.sandbox import nspawn

    private, public = keypair()
    host_private, host_public = keypair()
    key = tmp / f"bkey{index}"
    key.write_text(private)
    key.chmod(0o600)
    ident = f"b{os.getpid()}x{index}"
    inst = tmp / ident
    upper = nspawn.layer_root(inst)
    for rel, text, mode in (("etc/ssh/ssh_host_ed25519_key", host_private, 0o600),
                            ("etc/ssh/ssh_host_ed25519_key.pub", host_public, 0o644),
                            ("root/.ssh/authorized_keys", public, 0o600),
                            ("etc/cloud/cloud-init.disabled", "", 0o644)):
        path = upper / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.rstrip("\n") + "\n")
        path.chmod(mode)
    (upper / "root").chmod(0o700)
    address = network.pool.allocate()
    known = tmp / f"bkh{index}"
    known.write_text(f"{address} {host_public}\n")
    start = time.monotonic()
    network.create(ident, address)
    nspawn.mount_layer(inst, image)
    spec = nspawn.ContainerSpec(ident, inst, network.netns_name(ident), tmp, "")
    proc = nspawn.spawn_container(spec)
    try:
        wait_ssh(address, "root", key, known)
        return time.monotonic() - start
    finally:
        nspawn.stop_container(proc)
        network.destroy(ident, address)
        nspawn.unmount_layer(inst)


NBCLOUD = [sys.executable, "-c", "from nbcloud.cli.app import main; main()"]


def up_time(sandbox_dir: Path, tmp: Path, index: int) -> float:
    env = {**os.environ, "NBCLOUD_HOME": str(tmp / f"home{index}"), "NBCLOUD_SANDBOX_DIR": str(sandbox_dir),
           "NBCLOUD_USER_SSH_CONFIG": str(tmp / f"ssh{index}" / "config"), "NBCLOUD_QUIET": "1",
           "PYTHONPATH": str(ROOT / "src")}
    name = f"bench{index}"
    start = time.monotonic()
    subprocess.run([*NBCLOUD, "up", name, "--provider", "sandbox", "--no-connect",
                    "--json"], env=env, check=True, capture_output=True)
    elapsed = time.monotonic() - start
    subprocess.run([*NBCLOUD, "down", name, "--yes", "--delete-data"], env=env,
                   capture_output=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--up-runs", type=int, default=1)
    parser.add_argument("--subnet", default=os.environ.get("NBCLOUD_BENCH_SUBNET", "10.244.0.0/16"))
    parser.add_argument("--bare-subnet", default="10.245.0.0/24")
    args = parser.parse_args()

    import boto3

    from nbcloud.sandbox import client
    from nbcloud.sandbox.hosts import Network
    from nbcloud.sandbox.osimage import image_info

    image = image_info()
    if image is None:
        raise SystemExit("build the image first: nbcloud sandbox image build")
    tmp = Path(tempfile.mkdtemp(prefix="nbbench-os-"))
    (tmp / "bin").mkdir()  # the reference container's (empty) share of the sandbox's tools
    sandbox_dir = tmp / "sandbox"
    bare = Network(args.bare_subnet)
    bare.install_guard()
    try:
        info = client.start(sandbox_dir, subnet=args.subnet, os_mode=True, timeout=120)
        ec2 = boto3.client("ec2", endpoint_url=info.endpoint_url, region_name=info.region,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        ssm = boto3.client("ssm", endpoint_url=info.endpoint_url, region_name=info.region,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        ami = ssm.get_parameter(Name=UBUNTU)["Parameter"]["Value"]
        os_times, bare_times = [], []
        for index in range(args.runs):  # interleaved: both see the same machine load
            os_times.append(os_boot(ec2, ami, tmp, index))
            bare_times.append(bare_boot(bare, Path(image["path"]), tmp, index))
        ups = [up_time(sandbox_dir, tmp, i) for i in range(args.up_runs)]
    finally:
        client.reset(sandbox_dir)
        bare.cleanup_all()
    result = {
        "image": {k: image[k] for k in ("path", "built_at", "build_seconds", "size_bytes")},
        "os_boot_to_ssh_s": [round(t, 2) for t in os_times], "os_median_s": round(statistics.median(os_times), 2),
        "bare_nspawn_to_ssh_s": [round(t, 2) for t in bare_times],
        "bare_median_s": round(statistics.median(bare_times), 2),
        "ratio": round(statistics.median(os_times) / statistics.median(bare_times), 2),
        "up_to_jupyter_s": [round(t, 1) for t in ups],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
