"""Helpers shared by the tests (and bench/): the real CLI in a private world, key pairs, a pinned `ssh`, waiting.

Import as ``from tests.helpers import ...`` (tests/conftest.py puts the repository root on sys.path).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["UBUNTU", "World", "adopted_machine", "keypair", "pinned_ssh", "run_cli", "sandbox_logs", "wait_until",
           "world_env"]


def run_cli(env: dict[str, str], *args: str, check: bool = True,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`nbcloud ARGS` as a user runs it (a new process with ``env``); with ``check``, a failure is an AssertionError."""
    done = subprocess.run([sys.executable, "-m", "nbcloud.cli.app", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"nbcloud {' '.join(args)} failed ({done.returncode}):\n{done.stderr}\n{done.stdout}")
    return done


def sandbox_logs(sandbox_dir: Path | str, lines: int = 15) -> str:
    """The last lines of a sandbox's daemon log and of each instance's logs (boot console, IMDS, init, sshd): what
    a failure that only says "timed out" needs beside it (the sandbox is reset, and its files gone, once the test
    ends)."""
    root = Path(sandbox_dir)
    logs = [root / "daemon.log"]
    for instance in sorted((root / "instances").glob("*")):
        logs += [instance / name for name in ("console.log", "imds.log", "init.log")]
        logs += [instance / "root/var/log/sshd.log", instance / "root/var/log/cloud-init-output.log"]
    out = []
    for log in logs:
        if log.is_file():
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.relative_to(root)} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "\n".join(out) or f"(no logs under {root})"


def keypair() -> tuple[str, str]:
    """A fresh ed25519 pair: (OpenSSH private key, ``ssh-ed25519 AAAA…`` public key without a comment)."""
    from nbcloud.ssh.keys import generate_ed25519

    pair = generate_ed25519("")
    return pair.private_openssh, pair.public_blob


def pinned_ssh(key_file: Path, known_hosts: Path, connect_timeout: float = 3) -> list[str]:
    """The start of an OpenSSH command line that logs in with ``key_file`` and accepts only the pinned host key."""
    return ["ssh", "-i", str(key_file), "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout:g}", "-o", "LogLevel=ERROR"]


def wait_until(predicate: Callable[[], Any], timeout: float, step: float = 0.1, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); an AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"{what}: not within {timeout:g} s")


def world_env(root: Path, sandbox: Any) -> dict[str, str]:
    """The variables that give a test its own NBCLOUD_HOME and ~/.ssh/config under ``root`` on ``sandbox``."""
    return {"NBCLOUD_HOME": str(root / "nbhome"), "NBCLOUD_USER_SSH_CONFIG": str(root / "dot-ssh" / "config"),
            "NBCLOUD_SANDBOX_DIR": str(sandbox.sandbox_dir), "NBCLOUD_QUIET": "1"}


@dataclass
class World:
    """One test's (or module's) nbcloud: its own NBCLOUD_HOME and ~/.ssh/config, the shared sandbox cloud."""

    home: Path
    user_ssh_config: Path
    sandbox: Any
    env: dict[str, str]
    names: set[str] = field(default_factory=set)

    @classmethod
    def under(cls, root: Path, sandbox: Any) -> World:
        values = world_env(root, sandbox)
        return cls(Path(values["NBCLOUD_HOME"]), Path(values["NBCLOUD_USER_SSH_CONFIG"]), sandbox,
                   dict(os.environ) | values)

    def nb(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return run_cli(self.env, *args, check=check, timeout=timeout)

    def nb_json(self, *args: str, **kwargs: Any) -> Any:
        return json.loads(self.nb(*args, "--json", **kwargs).stdout)

    def up(self, name: str, *extra: str, timeout: float = 600) -> dict[str, Any]:
        self.names.add(name)
        return self.nb_json("up", name, "--provider", "sandbox", "--no-connect", *extra, timeout=timeout)

    def down_all(self) -> None:
        """Tear down whatever the test made, even when it failed half-way: all names at once, as separate `down`s
        (each waits for its instance to terminate; different names take different locks)."""
        from concurrent.futures import ThreadPoolExecutor

        names = sorted(self.names)
        if not names:
            return
        with ThreadPoolExecutor(max_workers=min(4, len(names))) as pool:
            list(pool.map(lambda name: self.nb("down", name, "--delete-data", "--yes", check=False, timeout=300),
                          names))

    def ssh(self, alias: str, command: str = "true", timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Plain OpenSSH through the user's ~/.ssh/config, as a user would type it."""
        return subprocess.run(["ssh", "-F", str(self.user_ssh_config), "-o", "BatchMode=yes", alias, command],
                              capture_output=True, text=True, timeout=timeout)

    def ssh_out(self, name: str, command: str, timeout: float = 60) -> str:
        """``ssh nb-NAME COMMAND`` that must succeed: its stdout."""
        done = self.ssh(f"nb-{name}", command, timeout=timeout)
        assert done.returncode == 0, f"ssh nb-{name} {command!r}: {done.stderr}"
        return done.stdout

    def secret(self, name: str, suffix: str) -> str:
        """The local secrets/NAME.SUFFIX (token, crt …)."""
        return (self.home / "secrets" / f"{name}.{suffix}").read_text().strip()

    def pinned(self, name: str) -> str:
        """The certificate fingerprint pinned for a public-mode instance (in-process: needs NBCLOUD_HOME set)."""
        from nbcloud.ops import Context
        from nbcloud.ops.public import pinned_fingerprint

        value = pinned_fingerprint(Context.create(), name)
        assert value, f"no fingerprint pinned for {name}"
        return value

    def status(self, name: str) -> dict[str, Any]:
        """``status NAME --json`` of one instance."""
        data = self.nb_json("status", name)
        return data[0] if isinstance(data, list) else data

    def scale_prices(self, factor: float, instance_type: str = "t3.medium") -> float:
        """Write the price table times ``factor`` where `load_prices()` finds it; return that type's scaled price.

        Money tests scale prices so a cent accrues in about a second.
        """
        from nbcloud.money.pricing import load_prices

        table = load_prices().scaled(factor)
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "prices.json").write_text(table.to_json())
        hourly = table.hourly(instance_type, self.sandbox.region)
        assert hourly
        return hourly

    def ec2(self) -> Any:
        return sandbox_boto(self.sandbox, "ec2")

    def tagged(self, name: str) -> list[Any]:
        from nbcloud.providers.aws.provider import AwsProvider
        from nbcloud.providers.aws.session import AwsSession

        session = AwsSession.create(region=self.sandbox.region, endpoint_url=self.sandbox.endpoint_url,
                                    access_key="testing", secret_key="testing")
        return AwsProvider(session, label="sandbox").tagged_resources(name)


# The SSM parameter of the Ubuntu 24.04 AMI (seeded in the sandbox)
UBUNTU = "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"


def sandbox_boto(info: Any, service: str) -> Any:
    """A boto3 client for the sandbox ``info`` describes (its endpoint, region and dummy credentials)."""
    import boto3

    from nbcloud.sandbox.client import CREDENTIALS

    return boto3.client(service, endpoint_url=info.endpoint_url, region_name=info.region,
                        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])


def adopted_machine(home: Path, name: str) -> Path:
    """What `up NAME --provider ssh --host me@127.0.0.2:1` leaves in NBCLOUD_HOME=home (port 1 is closed: the machine
    is unreachable): the record and the link keys/NAME to the user's key (returned), never a copy of it."""
    from nbcloud.state import Record, Store

    store = Store(home / "state.db")
    store.put(Record(name=name, provider="ssh", region="-", instance_id="me@127.0.0.2:1", host="127.0.0.2",
                     user="me", instance_type="ssh-host", spec={"ssh_port": 1}))
    store.close()
    (home / "keys").mkdir(mode=0o700, exist_ok=True)
    users_key = home / "users-key"
    (home / "keys" / name).symlink_to(users_key)
    users_key.write_text("key")
    return users_key


class Probe:
    """The instance's state as the cloud API reports it (never over ssh: an ssh session may count as activity)."""

    def __init__(self, ec2: Any, instance_id: str) -> None:
        self.ec2, self.instance_id = ec2, instance_id

    def state(self) -> str:
        reply = self.ec2.describe_instances(InstanceIds=[self.instance_id])
        return str(reply["Reservations"][0]["Instances"][0]["State"]["Name"])

    def stays_running(self, until: float, why: str, tick: Callable[[], None] | None = None) -> None:
        while time.monotonic() < until:
            state = self.state()
            assert state == "running", f"{self.instance_id} went {state} while {why}"
            if tick:
                tick()
            time.sleep(2)

    def stops_by(self, deadline: float, why: str) -> float:
        """Monotonic time at which the API first showed stopping/stopped."""
        while time.monotonic() < deadline:
            if self.state() in ("stopping", "stopped"):
                return time.monotonic()
            time.sleep(1)
        raise AssertionError(f"{self.instance_id} did not stop in time after {why} (state {self.state()})")


def side_by_side(scenarios: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run scenarios that mostly wait on the clock (billing minimums, idle limits) at once, each in a thread; every
    failure is reported, not just the first. Their instances have different names, so they share one world."""
    from concurrent.futures import ThreadPoolExecutor

    results: dict[str, Any] = {}
    failures: list[str] = []
    with ThreadPoolExecutor(max_workers=len(scenarios)) as pool:
        futures = {name: pool.submit(run) for name, run in scenarios.items()}
        for name, future in futures.items():
            try:
                results[name] = future.result()
            except Exception as exc:
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)
    return results
