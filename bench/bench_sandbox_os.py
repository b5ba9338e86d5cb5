"""os-mode sandbox (real OS in systemd-nspawn): boot to SSH against a bare nspawn boot of the same root filesystem,
and `nbcloud up` → Jupyter answering.

Prints, in one run:
  * os mode: RunInstances (key pair only) → `ssh ubuntu@ip true` succeeds (cloud-init put the key there from IMDS)
  * reference: an overlay over the same image + `systemd-nspawn -b` in a fresh namespace (host key and root's key
    written beforehand, cloud-init disabled) → `ssh root@ip true` succeeds
  * the ratio of the medians (issue 16's goal: ≤ 1.3)
  * a second reference: the same image booted by nspawn alone with cloud-init on, from a NoCloud seed in the layer
    (the login key in its user-data; cloud-init makes the host keys and `ubuntu`): a cloud image booted outside a
    cloud. os mode's time over it is what the sandbox adds (RunInstances, the daemon, IMDS over the network)
  * `nbcloud up NAME --no-connect` (returns once Jupyter answers) on the same sandbox, --up-runs times, against a
    bare `python -m jupyter_server` started by hand inside that instance to /api/status answering (goal: ≤ 2.0);
    with --baked, in turn with `up NAME --image` of an image baked (`nbcloud image bake`) from a first instance

The reference is the same image, the same overlay, the same nspawn command line (nspawn.ContainerSpec) in a
namespace made by the same code (hosts.Network): what it lacks is what os mode adds (cloud-init, IMDS, the daemon).

Run as root, after `nbcloud sandbox image build`:
  python bench/bench_sandbox_os.py [--runs 5] [--up-runs 1] [--baked] [--subnet 10.244.0.0/16] [--bare-subnet CIDR]
      [--image DIR --image DIR2]  (compare two images in one run, e.g. one built with NBCLOUD_OS_IMAGE=DIR2)
Its own sandboxes (one per image, in the first half of --subnet, reset at the end) and its own reference
namespaces (the last /24 of --subnet unless given; names carry this process's id), each subnet behind a
blackhole route, so it runs beside another sandbox.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.helpers import UBUNTU, keypair, pinned_ssh, sandbox_boto  # noqa: E402


def _port_open(address: str, port: int = 22) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_ssh(address: str, user: str, key: Path, known_hosts: Path | None, timeout: float = 120) -> None:
    """Until `ssh user@address true` succeeds. Port 22 is probed first with a bare connect every 20 ms: an ssh
    client per try (~50 ms of CPU every ~0.1 s) would take the CPU from the boot it waits for, and more from the
    longer os-mode boot than from the reference."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _port_open(address):
            time.sleep(0.02)
            continue
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


def _reference_files(public: str, host_private: str, host_public: str, cloud_init: bool) -> list[tuple[str, str, int]]:
    """What the reference's layer gets before it boots: without cloud-init, a host key and root's key; with it,
    a NoCloud seed carrying the login key (how a cloud image boots outside a cloud), cloud-init then making the host
    keys and the `ubuntu` user as it does from IMDS in os mode."""
    if not cloud_init:
        return [("etc/ssh/ssh_host_ed25519_key", host_private, 0o600),
                ("etc/ssh/ssh_host_ed25519_key.pub", host_public, 0o644),
                ("root/.ssh/authorized_keys", public, 0o600),
                ("etc/cloud/cloud-init.disabled", "", 0o644)]
    return [("etc/cloud/cloud.cfg.d/99-bench-nocloud.cfg", "datasource_list: [ NoCloud, None ]", 0o644),
            ("var/lib/cloud/seed/nocloud/meta-data", "instance-id: bench\nlocal-hostname: bench", 0o600),
            ("var/lib/cloud/seed/nocloud/user-data", f"#cloud-config\nssh_authorized_keys: [{json.dumps(public)}]",
             0o600)]


def bare_boot(network, image: Path, tmp: Path, index: int, cloud_init: bool = False) -> float:
    """The same image booted by nspawn alone: what os mode adds (IMDS, the daemon, and cloud-init unless
    ``cloud_init``) is the difference."""
    from nbcloud.sandbox import nspawn

    private, public = keypair()
    host_private, host_public = keypair()
    key = tmp / f"bkey{index}{cloud_init:d}"
    key.write_text(private)
    key.chmod(0o600)
    ident = f"b{os.getpid()}x{index}{cloud_init:d}"
    inst = tmp / ident
    upper = nspawn.layer_root(inst)
    for rel, text, mode in _reference_files(public, host_private, host_public, cloud_init):
        path = upper / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.rstrip("\n") + "\n")
        path.chmod(mode)
    if not cloud_init:
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
        if cloud_init:
            wait_ssh(address, "ubuntu", key, None)
        else:
            wait_ssh(address, "root", key, known)
        return time.monotonic() - start
    finally:
        nspawn.stop_container(proc)
        network.destroy(ident, address)
        nspawn.unmount_layer(inst)


NBCLOUD = [sys.executable, "-c", "from nbcloud.cli.app import main; main()"]


# the denominator of `up`'s figure: a bare Jupyter server started by hand inside the same instance (its venv, its
# user), from the command to /api/status answering, timed inside (no SSH in it)
BARE_JUPYTER = (
    "port=8899; s=$(date +%s%N); "
    "/opt/nbcloud/venv/bin/python -m jupyter_server --no-browser --ServerApp.port=$port --ServerApp.token=bench "
    "--ServerApp.port_retries=0 >/tmp/bench-jupyter.log 2>&1 & p=$!; "
    "until curl -sf -o /dev/null \"http://127.0.0.1:$port/api/status?token=bench\"; do "
    "kill -0 $p 2>/dev/null || exit 3; sleep 0.05; done; e=$(date +%s%N); kill $p; wait $p; "
    "echo $(( (e - s) / 1000000 ))"
)


def _env(sandbox_dir: Path, tmp: Path, index: int) -> dict[str, str]:
    return {**os.environ, "NBCLOUD_HOME": str(tmp / f"home{index}"), "NBCLOUD_SANDBOX_DIR": str(sandbox_dir),
            "NBCLOUD_USER_SSH_CONFIG": str(tmp / f"ssh{index}" / "config"), "NBCLOUD_QUIET": "1",
            "PYTHONPATH": str(ROOT / "src")}


def bake(sandbox_dir: Path, tmp: Path) -> str:
    """An image baked from a new instance (`image bake`: its disk, Jupyter's environment included), which is then
    removed: the name for `up --image`."""
    env = _env(sandbox_dir, tmp, 999)
    for argv in (["up", "bakesrc", "--provider", "sandbox", "--no-connect"], ["image", "bake", "bakesrc",
                 "--image-name", "benchbaked"], ["down", "bakesrc", "--yes", "--delete-data"]):
        done = subprocess.run([*NBCLOUD, *argv], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"nbcloud {' '.join(argv)} failed: {(done.stderr or done.stdout).strip()[-300:]}")
    return "benchbaked"


def up_time(sandbox_dir: Path, tmp: Path, index: int, image: str | None = None) -> tuple[float, float]:
    """`nbcloud up` (of ``image`` if given) to Jupyter answering, then a bare `jupyter server` start inside that
    instance."""
    env = _env(sandbox_dir, tmp, index)
    name = f"bench{index}"
    start = time.monotonic()
    up = subprocess.run([*NBCLOUD, "up", name, "--provider", "sandbox", "--no-connect", "--json",
                         *(("--image", image) if image else ())], env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - start
    if up.returncode != 0:
        raise SystemExit(f"nbcloud up failed ({up.returncode}): {(up.stderr or up.stdout).strip()[-300:]}")
    try:
        out = subprocess.run([*NBCLOUD, "ssh", name, "--", BARE_JUPYTER], env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"bare jupyter server failed in the instance: {(out.stderr or out.stdout)[-300:]}")
        bare = int(out.stdout.split()[-1]) / 1000
    finally:
        subprocess.run([*NBCLOUD, "down", name, "--yes", "--delete-data"], env=env, capture_output=True)
    return elapsed, bare


def _subnets(subnet: str, bare: str | None, count: int) -> tuple[list[str], str]:
    """One sandbox subnet per image in the first half of ``subnet``, the reference's /24 at its end (unless given:
    then it must not overlap, or the sandbox's guard drops the reference's traffic)."""
    net = ipaddress.ip_network(subnet, strict=False)
    if net.prefixlen > 20:
        raise SystemExit(f"--subnet {subnet}: give a /20 or larger")
    low, high = net.subnets(prefixlen_diff=1)
    parts = [str(p) for p in low.subnets(prefixlen_diff=2)][:count]
    bare_net = str(list(high.subnets(new_prefix=24))[-1]) if bare is None else bare
    if any(ipaddress.ip_network(bare_net, strict=False).overlaps(ipaddress.ip_network(p)) for p in parts):
        raise SystemExit(f"--bare-subnet {bare_net} overlaps a sandbox subnet ({', '.join(parts)})")
    return parts, bare_net


def _image(directory: str | None) -> dict[str, Any]:
    from nbcloud.sandbox.osimage import image_info

    if directory:
        os.environ["NBCLOUD_OS_IMAGE"] = directory
    else:
        os.environ.pop("NBCLOUD_OS_IMAGE", None)
    image = image_info()
    if image is None:
        raise SystemExit(f"no built image at {directory or 'the default path'}: nbcloud sandbox image build")
    return image


def _remove(tmp: Path) -> None:
    """The run's layers and keys (hundreds of MB): only once nothing is mounted below (else left for a look)."""
    prefix = str(tmp) + "/"
    if any(line.split()[1].startswith(prefix) for line in Path("/proc/self/mounts").read_text().splitlines()):
        print(f"left {tmp}: still mounted below", file=sys.stderr)
        return
    shutil.rmtree(tmp, ignore_errors=True)


def _figures(image: dict[str, Any], os_times: list[float], bare_times: list[float],
             ups: list[tuple[float, float]], bare_cloud_init: list[float]) -> dict[str, Any]:
    result = {
        "image": {k: image[k] for k in ("path", "built_at", "build_seconds", "size_bytes")},
        "os_boot_to_ssh_s": [round(t, 2) for t in os_times], "os_median_s": round(statistics.median(os_times), 2),
        "bare_nspawn_to_ssh_s": [round(t, 2) for t in bare_times],
        "bare_median_s": round(statistics.median(bare_times), 2),
        "ratio": round(statistics.median(os_times) / statistics.median(bare_times), 2),
        "bare_cloud_init_to_ssh_s": [round(t, 2) for t in bare_cloud_init],
        "bare_cloud_init_median_s": round(statistics.median(bare_cloud_init), 2),
        "ratio_vs_bare_cloud_init": round(statistics.median(os_times) / statistics.median(bare_cloud_init), 2),
    }
    if ups:
        up_median, bare_median = statistics.median(u for u, _ in ups), statistics.median(b for _, b in ups)
        result |= {"up_to_jupyter_s": [round(u, 2) for u, _ in ups],
                   "bare_jupyter_server_s": [round(b, 2) for _, b in ups],
                   "up_ratio": round(up_median / bare_median, 2)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--up-runs", type=int, default=1)
    parser.add_argument("--baked", action="store_true",
                        help="also `up --image` of an image baked from an instance (`image bake`), in turn with `up`")
    parser.add_argument("--subnet", default=os.environ.get("NBCLOUD_BENCH_SUBNET", "10.244.0.0/16"))
    parser.add_argument("--bare-subnet", default=None, help="default: the last /24 of --subnet")
    parser.add_argument("--image", action="append", default=[],
                        help="an image directory (as $NBCLOUD_OS_IMAGE); repeat to compare images in one run "
                             "(default: the machine's)")
    args = parser.parse_args()


    from nbcloud.sandbox import client
    from nbcloud.sandbox.hosts import Network

    dirs: list[str | None] = list(args.image) or [None]
    if len(dirs) > 4:
        raise SystemExit("at most 4 images in one run")
    images = [_image(d) for d in dirs]
    subnets, bare_subnet = _subnets(args.subnet, args.bare_subnet, len(dirs))
    tmp = Path(tempfile.mkdtemp(prefix="nbbench-os-"))
    (tmp / "bin").mkdir()  # the reference container's (empty) share of the sandbox's tools
    bare = Network(bare_subnet)
    bare.install_guard()
    sandboxes: list[Path] = []
    baked_ups: list[tuple[float, float]] = []
    times: list[tuple[list[float], list[float], list[tuple[float, float]], list[float]]] = [
        ([], [], [], []) for _ in dirs]
    try:
        ec2s, amis = [], []
        for n, (directory, subnet) in enumerate(zip(dirs, subnets, strict=True)):
            _image(directory)  # the daemon boots the image $NBCLOUD_OS_IMAGE names when it starts
            sandboxes.append(tmp / f"sandbox{n}")
            info = client.start(sandboxes[-1], subnet=subnet, os_mode=True, timeout=120)
            ec2s.append(sandbox_boto(info, "ec2"))
            amis.append(sandbox_boto(info, "ssm").get_parameter(Name=UBUNTU)["Parameter"]["Value"])
        for index in range(args.runs):  # interleaved: every image and the reference see the same machine load
            for n, image in enumerate(images):
                times[n][0].append(os_boot(ec2s[n], amis[n], tmp, index * 10 + n))
                times[n][1].append(bare_boot(bare, Path(image["path"]), tmp, index * 10 + n))
                times[n][3].append(bare_boot(bare, Path(image["path"]), tmp, index * 10 + n, cloud_init=True))
        boots = [_figures(image, *t) for image, t in zip(images, times, strict=True)]
        print(json.dumps(boots[0] if len(boots) == 1 else boots, indent=2), flush=True)  # kept if `up` fails
        baked_name = bake(sandboxes[0], tmp) if args.baked and args.up_runs else None
        for index in range(args.up_runs):
            for n in range(len(dirs)):
                times[n][2].append(up_time(sandboxes[n], tmp, index * 10 + n))
            if baked_name:  # in turn with the plain `up`s: the same load
                baked_ups.append(up_time(sandboxes[0], tmp, index * 10 + 9, image=baked_name))
    finally:
        for sandbox in sandboxes:
            client.reset(sandbox)
        bare.cleanup_all()
        _remove(tmp)
    if args.up_runs:
        results = [_figures(image, *t) for image, t in zip(images, times, strict=True)]
        if baked_ups:
            results[0] |= {"baked_up_to_jupyter_s": [round(u, 2) for u, _ in baked_ups],
                           "baked_bare_jupyter_server_s": [round(b, 2) for _, b in baked_ups],
                           "baked_up_ratio": round(statistics.median(u for u, _ in baked_ups)
                                                   / statistics.median(b for _, b in baked_ups), 2)}
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2))


if __name__ == "__main__":
    main()
