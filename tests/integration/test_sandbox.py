"""The sandbox cloud with raw boto3 and real OpenSSH: boot, user-data, lifecycle, faults, services, IMDS, reset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from tests.helpers import UBUNTU, keypair, pinned_ssh, wait_until

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(180)]


def _user_data(host_private: str, host_public: str, script: str) -> str:
    config = json.dumps({"ssh_deletekeys": True,
                         "ssh_keys": {"ed25519_private": host_private, "ed25519_public": host_public}})
    return (
        'Content-Type: multipart/mixed; boundary="==B=="\nMIME-Version: 1.0\n\n'
        '--==B==\nContent-Type: text/cloud-config; charset="us-ascii"\n\n'
        f"#cloud-config\n{config}\n"
        '--==B==\nContent-Type: text/x-shellscript; charset="us-ascii"\n\n'
        f"{script}\n--==B==--\n"
    )


@dataclass
class Machine:
    """A launched instance and a real `ssh` that pins its host key."""

    ec2: Any
    instance_id: str
    key_file: Path
    host_public: str
    workdir: Path
    address: str = ""  # the public address (the one a user connects to)
    private: str = ""

    def refresh(self) -> dict[str, Any]:
        inst = self.ec2.describe_instances(InstanceIds=[self.instance_id])["Reservations"][0]["Instances"][0]
        self.address = inst.get("PublicIpAddress", "")
        self.private = inst.get("PrivateIpAddress", "")
        return inst

    def ssh(self, command: str = "true", timeout: float = 30, extra: tuple[str, ...] = (),
            known_hosts: str | None = None, to: str | None = None) -> subprocess.CompletedProcess[str]:
        to = to or self.address
        kh = self.workdir / "known_hosts"
        kh.write_text(known_hosts or f"{to} {self.host_public}\n")
        return subprocess.run([*pinned_ssh(self.key_file, kh), *extra, f"ubuntu@{to}", command],
                              capture_output=True, text=True, timeout=timeout)

    def wait_ssh(self, timeout: float = 30) -> float:
        start = time.monotonic()
        last = None
        while time.monotonic() - start < timeout:
            last = self.ssh("true", timeout=10)
            if last.returncode == 0:
                return time.monotonic() - start
            time.sleep(0.1)
        raise AssertionError(f"no ssh to {self.address}: {last.stderr if last else ''}")


@pytest.fixture
def machine(sandbox: Any, sandbox_ec2: Any, sandbox_client: Any, tmp_path: Path) -> Any:
    made: list[str] = []

    def launch(script: str = "#!/bin/bash\necho ran > /home/ubuntu/ran.txt\n", **extra: Any) -> Machine:
        private, public = keypair()
        host_private, host_public = keypair()
        key_file = tmp_path / f"key{len(made)}"
        key_file.write_text(private)
        key_file.chmod(0o600)
        name = f"test-{os.getpid()}-{time.monotonic_ns()}"
        sandbox_ec2.import_key_pair(KeyName=name, PublicKeyMaterial=public.encode())
        ami = sandbox_client("ssm").get_parameter(Name=UBUNTU)["Parameter"]["Value"]
        reply = sandbox_ec2.run_instances(ImageId=ami, InstanceType="t3.micro", MinCount=1, MaxCount=1, KeyName=name,
                                          UserData=_user_data(host_private, host_public, script), **extra)
        inst_id = reply["Instances"][0]["InstanceId"]
        made.append(inst_id)
        m = Machine(sandbox_ec2, inst_id, key_file, host_public, tmp_path)
        m.address = reply["Instances"][0]["PublicIpAddress"]
        m.private = reply["Instances"][0]["PrivateIpAddress"]
        assert m.address and m.private and m.private != m.address  # two addresses, as on EC2
        return m

    yield launch
    if made:
        sandbox_ec2.terminate_instances(InstanceIds=made)


def _netns_list() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait(predicate: Any, timeout: float = 20, step: float = 0.1) -> Any:
    return wait_until(predicate, timeout, step)


def test_api_images_validation_and_checkip(sandbox: Any, sandbox_ec2: Any, sandbox_client: Any) -> None:
    ami = sandbox_client("ssm").get_parameter(Name=UBUNTU)["Parameter"]["Value"]
    image = sandbox_ec2.describe_images(ImageIds=[ami])["Images"][0]
    assert "ubuntu-noble-24.04-amd64-server" in image["Name"]
    with pytest.raises(ClientError):
        sandbox_ec2.run_instances(ImageId=ami, InstanceType="t9.bogus", MinCount=1, MaxCount=1)
    with urllib.request.urlopen(f"{sandbox.control_url}/checkip", timeout=5) as resp:
        assert resp.read().decode().strip() == sandbox.caller_ip


def test_lifecycle_ssh_userdata_stop_start_terminate(sandbox: Any, machine: Any) -> None:
    from nbcloud.sandbox import client

    m = machine()
    m.ec2.get_waiter("instance_running").wait(InstanceIds=[m.instance_id], WaiterConfig={"Delay": 1})
    m.wait_ssh()
    # user-data runs once boot is finished (after sshd is up, as with cloud-init's final stage)
    assert m.ssh("cloud-init status --wait >/dev/null; cat /home/ubuntu/ran.txt", timeout=90).stdout.strip() == "ran"
    _, wrong = keypair()
    refused = m.ssh("true", known_hosts=f"{m.address} {wrong}\n")
    assert refused.returncode != 0 and "HOST IDENTIFICATION HAS CHANGED" in refused.stderr
    first = m.address
    netns = next(i["namespace"] for i in client.status(sandbox.sandbox_dir)["instances"]
                 if i["instance_id"] == m.instance_id)
    assert netns in _netns_list()

    private = m.private
    # both addresses reach it from the host: the private one is on its eth0, the public one is translated to it
    assert m.ssh("hostname -I", to=private).stdout.split() == [private]
    assert m.ssh("hostname -I").stdout.split() == [private]

    m.ec2.stop_instances(InstanceIds=[m.instance_id])
    # as on EC2, an instance still stopping cannot be started (the sandbox used to boot it beside its old host)
    try:
        early = m.ec2.start_instances(InstanceIds=[m.instance_id])["StartingInstances"][0]["PreviousState"]["Name"]
    except ClientError as exc:
        early = exc.response["Error"]["Code"]
    assert early in ("IncorrectInstanceState", "stopped"), early
    if early == "stopped":  # it was down before the call came: stop it again for what follows
        m.ec2.get_waiter("instance_running").wait(InstanceIds=[m.instance_id], WaiterConfig={"Delay": 1})
        m.ec2.stop_instances(InstanceIds=[m.instance_id])
    m.ec2.get_waiter("instance_stopped").wait(InstanceIds=[m.instance_id], WaiterConfig={"Delay": 1})
    _wait(lambda: netns not in _netns_list())
    stopped = m.refresh()
    assert "PublicIpAddress" not in stopped and stopped["PrivateIpAddress"] == private  # as EC2 says it
    assert m.ssh("true", to=first).returncode != 0

    m.ec2.start_instances(InstanceIds=[m.instance_id])
    m.ec2.get_waiter("instance_running").wait(InstanceIds=[m.instance_id], WaiterConfig={"Delay": 1})
    m.refresh()
    assert m.address and m.address != first  # a new public address at every start
    assert m.private == private  # the private one stays (same ENI)
    m.wait_ssh()
    assert m.ssh("true", to=private).returncode == 0
    out = m.ssh("cat ran.txt; grep -c '^== running' /var/log/cloud-init-output.log").stdout.split()
    assert out == ["ran", "1"]  # same disk, user-data ran once

    m.ec2.terminate_instances(InstanceIds=[m.instance_id])
    _wait(lambda: not any(i["instance_id"] == m.instance_id for i in client.status(sandbox.sandbox_dir)["instances"]))
    assert netns not in _netns_list()
    assert not (Path(sandbox.sandbox_dir) / "instances" / m.instance_id).exists()


def test_link_cut_ends_session_without_leaking_then_heals(sandbox: Any, machine: Any) -> None:
    from nbcloud.sandbox import client

    m = machine()
    m.wait_ssh()
    kh = m.workdir / "known_hosts"
    session = subprocess.Popen(
        ["ssh", "-i", str(m.key_file), "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={kh}",
         "-o", "BatchMode=yes", "-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=2",
         f"ubuntu@{m.address}", "sleep 60"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        leaked_before = client.status(sandbox.sandbox_dir)["guard"]["leaked_packets"]
        cut = time.monotonic()
        client.fault(m.instance_id, "link-down", sandbox.sandbox_dir)
        route = subprocess.run(["ip", "route", "get", m.address], capture_output=True, text=True)
        assert "eth0" not in route.stdout and route.returncode != 0  # blackholed, not routed out
        session.wait(timeout=20)
        elapsed = time.monotonic() - cut
        assert elapsed < 15, elapsed
        guard = client.status(sandbox.sandbox_dir)["guard"]
        assert guard["blackhole"] and guard["leaked_packets"] == leaked_before
    finally:
        session.kill()
    client.fault(m.instance_id, "link-up", sandbox.sandbox_dir)
    route = subprocess.run(["ip", "route", "get", m.address], capture_output=True, text=True).stdout
    assert "nb" in route and "eth0" not in route
    assert m.ssh("echo back").stdout.strip() == "back"


UNIT = """[Unit]
Description=demo
After=network.target
[Service]
Type=simple
User=ubuntu
WorkingDirectory=/home/ubuntu
Environment="GREETING=hello world" N=1
ExecStart=/bin/sh -c 'echo "$GREETING $N $(id -un)" >> /home/ubuntu/demo.log; exec sleep 1000'
Restart=always
RestartSec=1
StandardOutput=append:/home/ubuntu/demo.out
StandardError=inherit
[Install]
WantedBy=multi-user.target
"""


def test_services_reboot_imds_spot_and_shutdown(sandbox: Any, machine: Any) -> None:
    from nbcloud.sandbox import client

    script = f"#!/bin/bash\ncat > /etc/systemd/system/demo.service <<'EOF'\n{UNIT}EOF\nsystemctl enable --now demo\n"
    m = machine(script=script)
    m.wait_ssh()
    pid = _wait(lambda: m.ssh("systemctl is-active demo >/dev/null && pgrep -u ubuntu -x sleep").stdout.strip())
    assert m.ssh("cat demo.log").stdout.splitlines()[0] == "hello world 1 ubuntu"
    m.ssh(f"kill {pid}")
    new = _wait(lambda: (p := m.ssh("pgrep -u ubuntu -x sleep").stdout.strip()) and p != pid and p, timeout=10)

    def boots() -> int:
        return next(i["boots"] for i in client.status(sandbox.sandbox_dir)["instances"]
                    if i["instance_id"] == m.instance_id)

    before = boots()
    client.fault(m.instance_id, "reboot", sandbox.sandbox_dir)
    _wait(lambda: boots() > before)
    m.wait_ssh()
    _wait(lambda: (p := m.ssh("pgrep -u ubuntu -x sleep", timeout=10).stdout.strip()) and p != new, timeout=20)
    enabled = m.ssh("systemctl is-enabled demo")
    assert enabled.stdout.strip() == "enabled", (enabled.returncode, enabled.stderr)

    imds = (
        "curl -s -o /dev/null -w '%{http_code} ' http://169.254.169.254/latest/meta-data/instance-id; "
        "T=$(curl -s -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token); "
        "for p in instance-id local-ipv4 instance-life-cycle spot/instance-action public-ipv4; do "
        "curl -s -w ' %{http_code}\\n' -H \"X-aws-ec2-metadata-token: $T\" "
        "http://169.254.169.254/latest/meta-data/$p; done"
    )
    lines = m.ssh(imds).stdout.splitlines()
    assert lines[0].startswith("401")
    assert lines[0].split()[1:] == [m.instance_id, "200"]
    assert lines[1] == f"{m.private} 200" and lines[2] == "on-demand 200" and lines[3].endswith("404")
    assert lines[4] == f"{m.address} 200"
    client.fault(m.instance_id, "spot-notice", sandbox.sandbox_dir, seconds=600)
    notice = m.ssh(imds).stdout.splitlines()[3].rsplit(" ", 1)
    assert notice[1] == "200" and json.loads(notice[0])["action"] == "terminate"

    m.ssh("sudo shutdown -h now")
    _wait(lambda: m.refresh()["State"]["Name"] == "stopped", timeout=20)


def test_instance_to_instance_by_private_and_public_address(sandbox: Any, machine: Any,
                                                           sandbox_ec2: Any) -> None:
    """As in a VPC: a rule naming a group admits its members by their private addresses; a member reaching the
    other's public address goes out through the gateway and arrives from its own public address (not admitted)."""
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    clients = sandbox_ec2.create_security_group(GroupName=f"clients-{tag}", Description="t")["GroupId"]
    server = sandbox_ec2.create_security_group(GroupName=f"server-{tag}", Description="t")["GroupId"]
    sandbox_ec2.authorize_security_group_ingress(GroupId=server, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "UserIdGroupPairs": [{"GroupId": clients}]},
        {"IpProtocol": "tcp", "FromPort": 2222, "ToPort": 2222, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    a = machine(SecurityGroupIds=[clients])
    b = machine(SecurityGroupIds=[server])
    a.wait_ssh()
    b.wait_ssh()
    # a server that answers with the address it sees the connection come from
    b.ssh("setsid nohup python3 -c 'import socket\ns = socket.create_server((\"\", 2222))\n"
          "while True: c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()' >/dev/null 2>&1 < /dev/null &")

    def probe(target: str, port: int) -> str:
        code = (f"import socket; s = socket.socket(); s.settimeout(3); r = s.connect_ex(('{target}', {port})); "
                "print(r, s.recv(64).decode() if r == 0 and %d == 2222 else '')" % port)
        return a.ssh(f"python3 -c \"{code}\"").stdout.strip()

    assert probe(b.private, 22) == "0"  # a member of the group the rule names, by private address
    assert probe(b.address, 22) != "0"  # the same through the public address: from a's public one, refused
    # who the server sees: a's private address directly, a's public address through the public path
    assert _wait(lambda: probe(b.private, 2222) == f"0 {a.private}", timeout=30)
    assert probe(b.address, 2222) == f"0 {a.address}"


def test_volume_attach_detach(sandbox: Any, machine: Any) -> None:
    m = machine()
    m.wait_ssh()
    zone = m.refresh()["Placement"]["AvailabilityZone"]
    vol = m.ec2.create_volume(Size=1, AvailabilityZone=zone)["VolumeId"]
    m.ec2.attach_volume(VolumeId=vol, InstanceId=m.instance_id, Device="/dev/sdf")
    _wait(lambda: m.ssh(f"sudo sh -c 'echo data > /mnt/sandbox-volumes/{vol}/f'").returncode == 0)
    m.ec2.detach_volume(VolumeId=vol)
    _wait(lambda: m.ssh(f"test -e /mnt/sandbox-volumes/{vol}").returncode == 1)
    assert (Path(sandbox.sandbox_dir) / "volumes" / vol / "f").read_text() == "data\n"
    m.ec2.delete_volume(VolumeId=vol)
    _wait(lambda: not (Path(sandbox.sandbox_dir) / "volumes" / vol).exists())


def test_fault_api_next_call_fails(sandbox: Any, sandbox_ec2: Any, sandbox_client: Any) -> None:
    from nbcloud.sandbox import client

    ami = sandbox_client("ssm").get_parameter(Name=UBUNTU)["Parameter"]["Value"]
    client.fault_api("RunInstances", "InsufficientInstanceCapacity", 1, sandbox.sandbox_dir)
    with pytest.raises(ClientError) as raised:
        sandbox_ec2.run_instances(ImageId=ami, InstanceType="t3.micro", MinCount=1, MaxCount=1)
    assert raised.value.response["Error"]["Code"] == "InsufficientInstanceCapacity"
    client.fault_api("DescribeVpcs", "UnauthorizedOperation", 5, sandbox.sandbox_dir)
    client.fault_api("DescribeVpcs", "UnauthorizedOperation", 0, sandbox.sandbox_dir)  # 0 clears
    sandbox_ec2.describe_vpcs()


def test_uv_installs_the_remote_packages_offline(sandbox: Any, machine: Any) -> None:
    from nbcloud.remote.packages import all_requirements

    m = machine()
    m.wait_ssh()
    env = " ".join(f"{k}={v}" for k, v in sandbox.bootstrap_env.items())
    reqs = " ".join(f"'{r}'" for r in all_requirements())
    # as a user-data script would run: once boot is finished (the instance's package cache is in place by then)
    done = m.ssh(f"cloud-init status --wait >/dev/null; export {env}; "
                 f"$NBCLOUD_UV venv -q -p $NBCLOUD_PYTHON ~/venv && $NBCLOUD_UV pip install -q "
                 f"--no-index --find-links $NBCLOUD_FIND_LINKS -p ~/venv {reqs} && ~/venv/bin/jupyter lab --version",
                 timeout=170)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("4.6")


def test_reset_leaves_nothing_behind(sandbox: Any, tmp_path: Path) -> None:
    """A second sandbox through the CLI, one instance, then `sandbox reset`: nothing of it may remain."""
    from tests.sandbox_fixtures import TEST_SUBNETS

    from nbcloud.sandbox.hosts import Network

    def nb(*args: str, check: bool = True) -> Any:
        done = subprocess.run([sys.executable, "-m", "nbcloud.cli.app", "sandbox", *args, "--json"],
                              capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0 or not check, done.stderr + done.stdout
        return json.loads(done.stdout)

    for subnet in [s for s in reversed(TEST_SUBNETS) if s != sandbox.subnet]:  # skip subnets others hold
        # its own home too: `sandbox reset` forgets the sandbox instances of the home it runs with (the runner's)
        env = {**os.environ, "NBCLOUD_HOME": str(tmp_path / "nbhome"), "NBCLOUD_SANDBOX_DIR": str(tmp_path / "sbx"),
               "NBCLOUD_SANDBOX_SUBNET": subnet}
        info = nb("start", check=False)
        if "error" not in info:
            break
        assert "used by another sandbox" in info["error"]["message"], info
    try:
        assert info["subnet"] == subnet and info["mode"] == "netns"
        import boto3

        ec2 = boto3.client("ec2", endpoint_url=info["endpoint_url"], region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        ec2.run_instances(ImageId=ami, InstanceType="t3.micro", MinCount=1, MaxCount=1)
        status = _wait(lambda: (s := nb("status"))["instances"] and s["instances"][0]["pids"] and s)
        pids = status["instances"][0]["pids"]
    finally:
        nb("reset")
    net = Network(subnet)
    assert net.own_namespaces() == [] and net.own_links() == []
    assert not net.guard_present()
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert net.nft_table not in tables and net.nat_table not in tables  # the guard and the public addresses' NAT
    assert [p for p in [*pids, info["pid"]] if _alive(p)] == []
    assert nb("status")["running"] is False
    # the disks of instances, volumes and the next instance's uv-cache copy go too (only the log and the empty lock
    # file of `sandbox start` may stay)
    assert {p.name for p in (tmp_path / "sbx").iterdir()} <= {"daemon.log", "start.lock"}, \
        list((tmp_path / "sbx").iterdir())
