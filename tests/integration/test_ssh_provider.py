"""The ssh provider on the sandbox: a sandbox instance plays "a machine the user already has".

The machine is launched through the sandbox's EC2 API directly (not by nbcloud), with a login key and a host key
made here; the host key goes into a known_hosts file that the user's ~/.ssh/config points at, as a user who has
logged in before would have. Then `nbcloud up other --provider ssh --host ubuntu@IP --identity-file KEY` must give
a Jupyter that answers through `connect`, refuse what it cannot do in one line, and clean up on `down`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nbcloud.ssh.keys import generate_ed25519
from nbcloud.ssh.target import fingerprint

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

UBUNTU = "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"


@dataclass(frozen=True)
class Machine:
    address: str
    key_file: Path
    host_public: str  # "ssh-ed25519 AAAA…"
    known_hosts: Path  # the user's: holds the machine's key, as after a first `ssh` and a checked fingerprint

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        """As the user would, with their own key and known_hosts (not through nbcloud)."""
        return subprocess.run(["ssh", "-i", str(self.key_file), "-o", f"UserKnownHostsFile={self.known_hosts}",
                               "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
                               f"ubuntu@{self.address}", command], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def machine(sandbox: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    import boto3

    ec2 = boto3.client("ec2", endpoint_url=sandbox.endpoint_url, region_name=sandbox.region,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    ssm = boto3.client("ssm", endpoint_url=sandbox.endpoint_url, region_name=sandbox.region,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    folder = tmp_path_factory.mktemp("users-machine")
    login = generate_ed25519("user@laptop")
    host = generate_ed25519("root@their-box")
    key_file = folder / "id_ed25519"
    key_file.write_text(login.private_openssh)
    key_file.chmod(0o600)
    # cloud-config host keys: the machine's own, fixed key (what its sshd presents for its whole life)
    user_data = "#cloud-config\n" + json.dumps({"ssh_keys": {"ed25519_private": host.private_openssh,
                                                             "ed25519_public": host.public_openssh}})
    key_name = f"users-key-{os.getpid()}-{time.monotonic_ns()}"
    ec2.import_key_pair(KeyName=key_name, PublicKeyMaterial=login.public_openssh.encode())
    ami = ssm.get_parameter(Name=UBUNTU)["Parameter"]["Value"]
    reply = ec2.run_instances(ImageId=ami, InstanceType="t3.micro", MinCount=1, MaxCount=1, KeyName=key_name,
                              UserData=user_data)
    instance_id = reply["Instances"][0]["InstanceId"]
    try:
        address = reply["Instances"][0]["PublicIpAddress"]
        known_hosts = folder / "known_hosts"
        known_hosts.write_text(f"{address} {host.public_blob}\n")
        found = Machine(address, key_file, host.public_blob, known_hosts)
        deadline = time.monotonic() + 60
        while found.run("true").returncode != 0:
            assert time.monotonic() < deadline, "the sandbox machine did not accept ssh"
            time.sleep(0.2)
        yield found
    finally:
        ec2.terminate_instances(InstanceIds=[instance_id])
        ec2.delete_key_pair(KeyName=key_name)


def user_config(world: Any, known_hosts: Path) -> None:
    """The user's ~/.ssh/config, pointing ssh (and so nbcloud's lookup) at their known_hosts."""
    world.user_ssh_config.parent.mkdir(parents=True, exist_ok=True)
    world.user_ssh_config.write_text(f"Host *\n  UserKnownHostsFile {known_hosts}\n")


@pytest.fixture
def ssh_world(world: Any, sandbox: Any) -> Any:
    # The sandbox machine has no internet: point the bootstrap at the sandbox's package cache, as a user with an
    # air-gapped machine would point it at a mirror.
    world.env["NBCLOUD_SSH_BOOTSTRAP_ENV"] = json.dumps(dict(sandbox.bootstrap_env))
    world.env["NBCLOUD_AGENT_CHECK_PERIOD"] = "2"
    return world


def one_line_error(done: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert done.returncode == code, (done.returncode, done.stderr, done.stdout)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def get(url: str, token: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"token {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_up_connect_status_refusals_down(ssh_world: Any, machine: Machine) -> None:
    world = ssh_world
    user_config(world, machine.known_hosts)
    key_before = machine.key_file.read_bytes()
    world.names.add("other")
    t0 = time.monotonic()
    result = world.nb_json("up", "other", "--provider", "ssh", "--host", f"ubuntu@{machine.address}",
                           "--identity-file", str(machine.key_file), "--no-connect", "--no-durable-outputs")
    assert result["provider"] == "ssh" and result["host"] == machine.address and result["user"] == "ubuntu"
    port = free_port()
    connected = world.nb_json("connect", "other", "--no-browser", "--port", str(port))
    token = connected["url"].split("token=")[1]
    status_code, body = get(f"http://127.0.0.1:{port}/api/status", token)
    seconds = time.monotonic() - t0
    assert status_code == 200 and body["started"], body
    assert get(f"http://127.0.0.1:{port}/api/status", None)[0] == 403
    print(f"\nup --provider ssh → Jupyter answering through connect: {seconds:.1f} s "
          f"(bootstrap done at {result['seconds'].get('bootstrap', 0):.1f} s)")

    # plain ssh nb-other through the user's ~/.ssh/config; the machine's own host key is the pinned one
    who = world.ssh("nb-other", "whoami")
    assert who.returncode == 0 and who.stdout.strip() == "ubuntu", who.stderr
    pinned = (world.home / "known_hosts").read_text()
    assert f"nb-other {machine.host_public}" in pinned
    config = (world.home / "ssh_config").read_text()
    assert str(machine.key_file) in config and "StrictHostKeyChecking yes" in config

    view = world.nb_json("status", "other")
    assert view["state"] == "running" and view["provider"] == "ssh" and view["tunnel"] == "up"
    assert view["idle_stop_seconds"] is None, "an adopted machine must never power itself off"
    logs = world.nb("logs", "other", "--bootstrap")
    assert "done in" in logs.stdout
    steps = [line.split("nbcloud-bootstrap: ")[1] for line in logs.stdout.splitlines() if ": ok (" in line]
    print(f"  phases (s from start): {result['seconds']}; bootstrap steps: {', '.join(steps)}")

    # nbcloud cannot power a machine it did not make: one line, exit 2, before anything is touched
    assert "cannot stop or start" in one_line_error(world.nb("stop", "other", check=False))
    assert "cannot stop or start" in one_line_error(world.nb("start", "other", check=False))
    assert "does not power it off" in one_line_error(world.nb("autostop", "other", "30m", check=False))
    # options given to `up` on the adopted machine: refused in one line (power) or applied in place, never ignored
    assert "--idle-stop" in one_line_error(world.nb("up", "other", "--idle-stop", "5m", "--no-connect", check=False))
    inplace = world.nb_json("up", "other", "--durable-outputs", "--no-connect")
    assert inplace["reused"] and inplace["changed"] == ["--durable-outputs"]
    assert "server_side_execution = True" in machine.run("cat /opt/nbcloud/etc/jupyter_server_config.py").stdout
    assert not (world.home / "keys" / "other.hostkey").exists(), "the machine keeps its own host key"
    # the same machine cannot be adopted twice (two Jupyter services would fight over one host)
    twice = world.nb("up", "again", "--provider", "ssh", "--host", f"ubuntu@{machine.address}",
                     "--identity-file", str(machine.key_file), check=False)
    assert "already adopted as 'other'" in one_line_error(twice)
    # down removes software from the user's machine: without a terminal it needs --yes
    assert "confirm with --yes" in one_line_error(world.nb("down", "other", check=False))
    assert get(f"http://127.0.0.1:{port}/api/status", token)[0] == 200, "a refused down changed nothing"

    down = world.nb_json("down", "other", "--yes")
    assert down["deleted"] == [f"instance ubuntu@{machine.address}:22"]
    world.names.discard("other")
    # (PIDs are shared with the sandbox's host, so ask the machine's own loopback, not pgrep, whether Jupyter runs)
    left = machine.run("ls /opt/nbcloud /var/lib/nbcloud /etc/systemd/system/nbcloud-jupyter.service "
                       "~/.config/nbcloud 2>&1; curl -s -o /dev/null -w 'http %{http_code}' http://127.0.0.1:8888/api")
    assert left.stdout.count("No such file") == 4 and "http 000" in left.stdout, left.stdout
    assert machine.key_file.read_bytes() == key_before, "the user's key is theirs: never changed or deleted"
    assert not (world.home / "keys" / "other").exists() and not (world.home / "keys" / "other").is_symlink()
    assert "nb-other" not in (world.home / "ssh_config").read_text()
    assert world.nb_json("status") == []


def test_unpinned_and_changed_host_keys_are_refused(ssh_world: Any, machine: Machine, tmp_path: Path) -> None:
    world = ssh_world
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    user_config(world, empty)
    host = ["--provider", "ssh", "--host", f"ubuntu@{machine.address}", "--identity-file", str(machine.key_file)]

    unpinned = one_line_error(world.nb("up", "fresh", *host, check=False))
    assert "no pinned host key" in unpinned and "--host-key-fingerprint" in unpinned
    wrong = "SHA256:" + "A" * 43
    assert "does not present a host key" in one_line_error(
        world.nb("up", "fresh", *host, "--host-key-fingerprint", wrong, check=False))
    assert world.nb_json("status") == [] and not (world.home / "keys" / "fresh").is_symlink()

    # a known_hosts entry with another key (the machine was replaced, or someone is in between): refused at ssh
    impostor = generate_ed25519("impostor").public_blob
    empty.write_text(f"{machine.address} {impostor}\n")
    changed = world.nb("up", "fresh", *host, check=False)
    assert changed.returncode != 0 and "host key" in changed.stderr and "Traceback" not in changed.stderr
    assert world.nb_json("status") == [] and "nb-fresh" not in (world.home / "ssh_config").read_text()

    # the right fingerprint pins the key the machine presents; gateway mode works as on a cloud instance
    empty.write_text("")
    world.names.add("fresh")
    right = fingerprint(machine.host_public.split()[1])
    world.nb_json("up", "fresh", *host, "--host-key-fingerprint", right, "--mode", "gateway", "--no-connect")
    assert f"nb-fresh {machine.host_public}" in (world.home / "known_hosts").read_text()
    connected = world.nb_json("connect", "fresh", "--no-browser", "--port", str(free_port()))
    code, specs = get(f"{connected['gateway_url']}/api/kernelspecs", connected["gateway_token"])
    assert code == 200 and specs["kernelspecs"], specs
    world.nb_json("down", "fresh", "--yes")
    world.names.discard("fresh")
    assert "No such file" in machine.run("ls /opt/nbcloud 2>&1").stdout
