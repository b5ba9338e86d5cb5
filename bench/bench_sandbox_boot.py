"""Sandbox boot time: RunInstances → first successful `ssh true`, against a bare sshd in a fresh namespace.

Prints, in one run (median of --runs):
  * sandbox: RunInstances (key pair + user-data with pinned host key) → `ssh true` succeeds
  * reference: `ip netns add` + veth + a bare `sshd -D` in that namespace → `ssh true` succeeds
  * the ratio (goal ≤ 1.5)

Run as root: python bench/bench_sandbox_boot.py [--runs 5] [--subnet 10.241.0.0/16] [--bare-subnet 10.242.0.0/24]
(its own sandbox on --subnet or $NBCLOUD_BENCH_SUBNET, reset at the end; the bare reference on --bare-subnet, behind
a blackhole route; namespace names carry this process's id, so it runs beside another sandbox or benchmark)
"""

from __future__ import annotations

import argparse
import ipaddress
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

from tests.helpers import UBUNTU, keypair, pinned_ssh, sandbox_boto  # noqa: E402


def wait_ssh(address: str, user: str, key: Path, known_hosts: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run([*pinned_ssh(key, known_hosts, connect_timeout=2), f"{user}@{address}", "true"],
                              capture_output=True)
        if done.returncode == 0:
            return
        time.sleep(0.02)
    raise SystemExit(f"ssh to {address} never succeeded")


def sandbox_boot(ec2, ami: str, tmp: Path, index: int) -> float:
    private, public = keypair()
    host_private, host_public = keypair()
    key = tmp / f"key{index}"
    key.write_text(private)
    key.chmod(0o600)
    ec2.import_key_pair(KeyName=f"bench{index}", PublicKeyMaterial=public.encode())
    import json

    cfg = json.dumps({"ssh_keys": {"ed25519_private": host_private, "ed25519_public": host_public}})
    start = time.monotonic()
    reply = ec2.run_instances(ImageId=ami, InstanceType="t3.micro", MinCount=1, MaxCount=1, KeyName=f"bench{index}",
                              UserData=f"#cloud-config\n{cfg}\n")
    inst = reply["Instances"][0]
    kh = tmp / f"kh{index}"
    kh.write_text(f"{inst['PublicIpAddress']} {host_public}\n")
    wait_ssh(inst["PublicIpAddress"], "ubuntu", key, kh)
    elapsed = time.monotonic() - start
    ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])
    return elapsed


def bare_sshd(tmp: Path, index: int, bare_net: ipaddress.IPv4Network) -> float:
    """The floor: a namespace, a veth with /32s, root's own sshd config with one authorized key."""
    tag = f"{os.getpid() % 100000}x{index}"  # interface names: 15 bytes at most
    ns, host, inner = f"nbbench{tag}", f"nbbh{tag}", f"nbbi{tag}"
    caller, addr = str(bare_net[1]), str(bare_net[index + 2])
    d = tmp / f"bare{index}"
    d.mkdir()
    private, public = keypair()
    (d / "key").write_text(private)
    (d / "key").chmod(0o600)
    (d / "authorized_keys").write_text(public + "\n")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "hostkey")], check=True)
    (d / "sshd_config").write_text(
        f"Port 22\nHostKey {d / 'hostkey'}\nUsePAM no\nPasswordAuthentication no\nPermitRootLogin yes\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nStrictModes no\nPidFile {d / 'sshd.pid'}\n")
    (d / "kh").write_text(f"{addr} {(d / 'hostkey.pub').read_text().split(' ', 2)[0]} "
                          f"{(d / 'hostkey.pub').read_text().split(' ', 2)[1]}\n")
    start = time.monotonic()
    script = (f"netns add {ns}\nlink add {host} type veth peer name {inner} netns {ns}\n")
    subprocess.run(["ip", "-batch", "-"], input=script, text=True, check=True)
    subprocess.run(["ip", "-n", ns, "-batch", "-"], text=True, check=True, input=(
        f"link set {inner} name eth0\naddr add {addr}/32 dev eth0\nlink set lo up\nlink set eth0 up\n"
        f"route add {caller}/32 dev eth0\nroute add default via {caller} dev eth0\n"))
    subprocess.run(["ip", "-batch", "-"], text=True, check=True, input=(
        f"addr add {caller}/32 dev {host}\nlink set {host} up\nroute replace {addr}/32 dev {host} src {caller}\n"))
    sshd = subprocess.Popen(["ip", "netns", "exec", ns, "/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ssh(addr, "root", d / "key", d / "kh")
        return time.monotonic() - start
    finally:
        sshd.kill()
        sshd.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)
        subprocess.run(["ip", "link", "del", host], check=False, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--subnet", default=os.environ.get("NBCLOUD_BENCH_SUBNET", "10.241.0.0/16"),
                        help="the sandbox's subnet (one no other sandbox holds)")
    parser.add_argument("--bare-subnet", default="10.242.0.0/24", help="the bare sshd reference's addresses")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    bare_net = ipaddress.ip_network(args.bare_subnet)
    if bare_net.num_addresses < args.runs + 3:
        raise SystemExit(f"--bare-subnet {bare_net} is too small for {args.runs} runs")
    # the bare sshd needs its privilege-separation directory; a fresh machine has none until sshd ran once
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

    from nbcloud.sandbox import client

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        subprocess.run(["ip", "route", "replace", "blackhole", str(bare_net)], check=True)
        info = client.start(tmp / "sandbox", subnet=args.subnet)
        try:
            ec2 = sandbox_boto(info, "ec2")
            ami = sandbox_boto(info, "ssm").get_parameter(Name=UBUNTU)["Parameter"]["Value"]
            sandbox_boot(ec2, ami, tmp, 99)  # warm-up (first calls, page cache)
            boots, bares = [], []
            for i in range(args.runs):
                boots.append(sandbox_boot(ec2, ami, tmp, i))
                bares.append(bare_sshd(tmp, i, bare_net))
        finally:
            client.reset(tmp / "sandbox")
            subprocess.run(["ip", "route", "del", "blackhole", str(bare_net)], check=False)
    boot, bare = statistics.median(boots), statistics.median(bares)
    print(f"sandbox RunInstances → ssh true   median {boot:.3f} s  ({', '.join(f'{b:.3f}' for b in boots)})")
    print(f"bare netns + sshd → ssh true      median {bare:.3f} s  ({', '.join(f'{b:.3f}' for b in bares)})")
    print(f"ratio {boot / bare:.2f}  (goal ≤ 1.5)")


if __name__ == "__main__":
    main()
