"""The sandbox's public address (NAT'ed on the host, as EC2's internet gateway) against its private one (routed).

Prints, in one run, host → one instance:
  * TCP connect + first byte, median of --connects, to the private and to the public address, and their ratio
  * --megabytes through one TCP connection from the instance, to each address, and the throughput ratio
  * stop → start → `ssh true` on the new public address (the private one kept)

Run as root: python bench/bench_sandbox_addresses.py [--connects 300] [--megabytes 200] [--subnet 10.243.0.0/16]
(its own sandbox on --subnet or $NBCLOUD_BENCH_SUBNET, reset at the end)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from bench.bench_sandbox_boot import wait_ssh  # noqa: E402
from tests.helpers import UBUNTU, keypair, pinned_ssh, sandbox_boto  # noqa: E402

PORT = 2222
# in the instance: a connection that sends N (decimal) gets N bytes back; one that asks 0 gets 1 byte
SERVER = (f"import socket\ns = socket.create_server(('', {PORT}))\nwhile True:\n    c, _ = s.accept()\n"
          "    n = int(c.recv(16) or b'0')\n    c.sendall(b'x' * max(n, 1))\n    c.close()\n")


def first_byte(address: str) -> float:
    start = time.perf_counter()
    with socket.create_connection((address, PORT), timeout=5) as sock:
        sock.sendall(b"0")
        sock.recv(1)
    return time.perf_counter() - start


def throughput(address: str, megabytes: int) -> float:
    want, got = megabytes * 1_000_000, 0
    start = time.perf_counter()
    with socket.create_connection((address, PORT), timeout=30) as sock:
        sock.sendall(str(want).encode())
        while chunk := sock.recv(1 << 20):
            got += len(chunk)
    assert got == want, (got, want)
    return megabytes / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connects", type=int, default=300)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--subnet", default=os.environ.get("NBCLOUD_BENCH_SUBNET", "10.243.0.0/16"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root")

    from nbcloud.sandbox import client

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        info = client.start(tmp / "sandbox", subnet=args.subnet)
        try:
            ec2 = sandbox_boto(info, "ec2")
            ami = sandbox_boto(info, "ssm").get_parameter(Name=UBUNTU)["Parameter"]["Value"]
            private_key, public_key = keypair()
            host_private, host_public = keypair()
            key = tmp / "key"
            key.write_text(private_key)
            key.chmod(0o600)
            ec2.import_key_pair(KeyName="bench", PublicKeyMaterial=public_key.encode())
            # a group that admits the bench port from anywhere (the sandbox's console rule covers port 22 only)
            group = ec2.create_security_group(GroupName="bench", Description="bench")["GroupId"]
            ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[
                {"IpProtocol": "tcp", "FromPort": PORT, "ToPort": PORT, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
            cfg = json.dumps({"ssh_keys": {"ed25519_private": host_private, "ed25519_public": host_public}})
            inst = ec2.run_instances(ImageId=ami, InstanceType="t3.micro", MinCount=1, MaxCount=1, KeyName="bench",
                                     SecurityGroupIds=[group], UserData=f"#cloud-config\n{cfg}\n")["Instances"][0]
            private, public = inst["PrivateIpAddress"], inst["PublicIpAddress"]
            kh = tmp / "kh"
            kh.write_text(f"{public} {host_public}\n{private} {host_public}\n")
            wait_ssh(public, "ubuntu", key, kh)
            subprocess.run([*pinned_ssh(key, kh), f"ubuntu@{public}",
                            f"setsid nohup python3 -c \"{SERVER}\" >/dev/null 2>&1 </dev/null &"], check=True)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    first_byte(private)
                    break
                except OSError:
                    time.sleep(0.1)
            results: dict[str, dict[str, float]] = {}
            for _ in range(2):  # interleaved, twice: load on a shared machine moves between rounds
                for name, address in (("private", private), ("public", public)):
                    row = results.setdefault(name, {"connect": 0.0, "mbps": 0.0})
                    row["connect"] += statistics.median(first_byte(address) for _ in range(args.connects)) / 2
                    row["mbps"] += throughput(address, args.megabytes) / 2
            started = time.monotonic()
            ec2.stop_instances(InstanceIds=[inst["InstanceId"]])
            ec2.get_waiter("instance_stopped").wait(InstanceIds=[inst["InstanceId"]], WaiterConfig={"Delay": 0.2})
            ec2.start_instances(InstanceIds=[inst["InstanceId"]])
            again = ec2.describe_instances(InstanceIds=[inst["InstanceId"]])["Reservations"][0]["Instances"][0]
            kh.write_text(f"{again['PublicIpAddress']} {host_public}\n")
            wait_ssh(again["PublicIpAddress"], "ubuntu", key, kh)
            restart = time.monotonic() - started
            assert again["PrivateIpAddress"] == private and again["PublicIpAddress"] != public
        finally:
            client.reset(tmp / "sandbox")
    p, q = results["private"], results["public"]
    print(f"connect + first byte  private {p['connect'] * 1e3:.3f} ms  public (NAT) {q['connect'] * 1e3:.3f} ms  "
          f"ratio {q['connect'] / p['connect']:.2f}")
    print(f"{args.megabytes} MB one connection  private {p['mbps']:.0f} MB/s  public (NAT) {q['mbps']:.0f} MB/s  "
          f"ratio {q['mbps'] / p['mbps']:.2f}")
    print(f"stop → start → ssh true on the new public address: {restart:.2f} s (private address kept)")


if __name__ == "__main__":
    main()
