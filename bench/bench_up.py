"""`up` to ssh-ready on the sandbox vs the hand-written minimum of the same API calls, and status's API calls.

Prints, in one run:
  * hand-written minimum: a fresh boto3 session and its EC2/SSM clients (loading EC2's service model is a fixed
    ~0.25 s that any script pays, so both sides pay it inside the timer), the image id from the SSM parameter,
    ImportKeyPair, CreateSecurityGroup + ingress, RunInstances (user-data with a host key), the
    `instance_running` waiter, first successful `ssh true` (median of N)
  * `nbcloud up` (library call, same steps plus validation, tags, rollback bookkeeping, ssh config) to ssh-ready
  * the ratio (goal ≤ 1.3)
  * the number of EC2 API calls `status` makes for 50 instances (goal: 1 page)

Run as root: python bench/bench_up.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

UBUNTU_PARAMETER = "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"


def hand_written(endpoint_url: str, region: str, tmp: Path) -> float:
    import boto3

    from nbcloud.ssh.keys import generate_ed25519

    login, host = generate_ed25519("bench"), generate_ed25519("bench-host")
    key_file = tmp / f"k-{uuid.uuid4().hex[:6]}"
    key_file.write_text(login.private_openssh)
    key_file.chmod(0o600)
    known = tmp / "known_hosts"
    user_data = ("#cloud-config\n" + __import__("json").dumps(
        {"ssh_keys": {"ed25519_private": host.private_openssh, "ed25519_public": host.public_openssh}}))
    name = f"hand-{uuid.uuid4().hex[:6]}"
    t0 = time.monotonic()
    boto = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=region)
    ec2, ssm = (boto.client(service, endpoint_url=endpoint_url) for service in ("ec2", "ssm"))
    image_id = ssm.get_parameter(Name=UBUNTU_PARAMETER)["Parameter"]["Value"]
    ec2.import_key_pair(KeyName=name, PublicKeyMaterial=login.public_openssh.encode())
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    group = ec2.create_security_group(GroupName=name, Description="bench", VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}])
    instance = ec2.run_instances(ImageId=image_id, InstanceType="t3.micro", MinCount=1, MaxCount=1, KeyName=name,
                                 SecurityGroupIds=[group], UserData=user_data)["Instances"][0]
    iid = instance["InstanceId"]
    ec2.get_waiter("instance_running").wait(InstanceIds=[iid], WaiterConfig={"Delay": 0.2, "MaxAttempts": 600})
    host_ip = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["PublicIpAddress"]
    known.write_text(f"{host_ip} {host.public_blob}\n")
    while subprocess.run(["ssh", "-i", str(key_file), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                          "-o", f"UserKnownHostsFile={known}", "-o", "ConnectTimeout=2", f"ubuntu@{host_ip}", "true"],
                         capture_output=True).returncode != 0:
        time.sleep(0.1)
    elapsed = time.monotonic() - t0
    ec2.terminate_instances(InstanceIds=[iid])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=[iid], WaiterConfig={"Delay": 0.2, "MaxAttempts": 300})
    ec2.delete_security_group(GroupId=group)
    ec2.delete_key_pair(KeyName=name)
    return elapsed


def nbcloud_up(name: str) -> float:
    from nbcloud import ops
    from nbcloud.models import InstanceSpec

    ctx = ops.Context.create()
    t0 = time.monotonic()
    ops.up(ctx, InstanceSpec(name=name, instance_type="t3.micro"), provider_name="sandbox", wait_jupyter=False)
    elapsed = time.monotonic() - t0
    ops.down(ctx, name)
    return elapsed


def status_calls(ec2, image_id: str, count: int = 50) -> int:
    from nbcloud import ops
    from nbcloud.state import Record

    ctx = ops.Context.create()
    ids = [i["InstanceId"] for i in ec2.run_instances(
        ImageId=image_id, InstanceType="t3.micro", MinCount=count, MaxCount=count)["Instances"]]
    for n, iid in enumerate(ids):
        ec2.create_tags(Resources=[iid], Tags=[{"Key": "nbcloud:name", "Value": f"many{n}"}])
        ctx.store.put(Record(name=f"many{n}", provider="sandbox", region="us-east-1", instance_id=iid,
                             instance_type="t3.micro"))
    # the provider status will use for these records (same provider, region, profile key)
    provider = ctx.provider("sandbox", "us-east-1", None)
    calls: list[str] = []
    provider.session.client("ec2").meta.events.register("before-call", lambda model, **_: calls.append(model.name))
    views = ops.status(ctx, with_agent=False)
    assert len(views) == count, len(views)
    ec2.terminate_instances(InstanceIds=ids)
    for n in range(count):
        ctx.store.delete(f"many{n}")
    return len(calls)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nbbench-"))
    os.environ["NBCLOUD_HOME"] = str(tmp / "home")
    os.environ["NBCLOUD_USER_SSH_CONFIG"] = str(tmp / "ssh_config")
    os.environ.setdefault("NBCLOUD_SANDBOX_SUBNET", "10.209.0.0/16")
    os.environ.setdefault("NBCLOUD_SANDBOX_DIR", str(tmp / "sandbox"))
    import boto3

    from nbcloud.sandbox import client as sandbox

    info = sandbox.start()
    try:
        ec2 = boto3.client("ec2", endpoint_url=info.endpoint_url, region_name=info.region,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        ssm = boto3.client("ssm", endpoint_url=info.endpoint_url, region_name=info.region,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        image_id = ssm.get_parameter(Name=UBUNTU_PARAMETER)["Parameter"]["Value"]
        hand, ours = [], []
        for run in range(args.runs):
            hand.append(hand_written(info.endpoint_url, info.region, tmp))
            ours.append(nbcloud_up(f"bench{run}"))
        h, o = statistics.median(hand), statistics.median(ours)
        print(f"hand-written minimum to ssh-ready: median {h:.2f} s  ({', '.join(f'{x:.2f}' for x in hand)})")
        print(f"nbcloud up to ssh-ready:          median {o:.2f} s  ({', '.join(f'{x:.2f}' for x in ours)})")
        print(f"ratio up / minimum: {o / h:.2f}  (goal ≤ 1.3)")
        calls = status_calls(ec2, image_id)
        print(f"EC2 API calls by `status` for 50 instances: {calls}  (goal: 1 page)")
    finally:
        sandbox.reset()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
