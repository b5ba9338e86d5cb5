"""`down` leaves no local trace of an instance; capabilities decide the advice (no network: only 127.0.0.2's
closed port is touched)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import adopted_machine

import nbcloud
from nbcloud.config import write_private
from nbcloud.ops import Context
from nbcloud.providers.aws.provider import AwsProvider
from nbcloud.providers.base import manages_machines
from nbcloud.ssh import config as ssh_config
from nbcloud.ssh.keys import load_or_create_host_key, load_or_create_login_key
from nbcloud.state import Record

# What `up`, `connect`, `gateway`, `lab` and public mode write for one instance, relative to NBCLOUD_HOME.
PER_INSTANCE = ["keys/{n}", "keys/{n}.pub", "keys/{n}.hostkey", "keys/{n}.hostkey.pub", "secrets/{n}.token",
                "secrets/{n}.gateway-token", "secrets/{n}.crt", "tunnels/{n}.json", "tunnels/{n}.args.json",
                "tunnels/{n}.log", "tunnels/{n}.log.1", "lab/{n}.json", "lab/{n}.log", "lab/{n}.token"]


def _files_of(home: Path, name: str) -> set[str]:
    return {str(p.relative_to(home)) for p in home.rglob(f"{name}*") if p.is_file() or p.is_symlink()}


def _make_instance_files(ctx: Context, name: str) -> None:
    p = ctx.paths
    load_or_create_login_key(p.keys_dir, name)
    load_or_create_host_key(p.keys_dir, name)
    for rel in [*PER_INSTANCE, "lab/{n}.lock"]:
        path = p.data_dir / rel.format(n=name)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_private(path, "x")
    ssh_config.write_entry(p, ssh_config.SshEntry(f"nb-{name}", "10.0.0.5", "ubuntu", p.keys_dir / name,
                                                  p.known_hosts))
    ssh_config.pin_host_key(p, f"nb-{name}", "ssh-ed25519 AAAA")
    ctx.store.put(Record(name=name, provider="sandbox", region="us-east-1", instance_id=f"i-{name}"))


def test_forget_locally_leaves_nothing_of_the_instance_but_its_locks(nbcloud_home: Path) -> None:
    from nbcloud.ops.instances import forget_locally

    ctx = Context.create()
    _make_instance_files(ctx, "demo")
    _make_instance_files(ctx, "demo2")  # a neighbour whose name starts the same: untouched
    with ctx.name_lock("demo"):
        assert {rel.format(n="demo") for rel in PER_INSTANCE} <= _files_of(nbcloud_home, "demo")
        forget_locally(ctx, "demo")
    left = {f for f in _files_of(nbcloud_home, "demo") if "demo2" not in f}
    assert left == {"locks/demo.lock", "lab/demo.lock"}, "only the (empty) lock files may stay"
    assert ctx.store.get("demo") is None and ctx.store.get("demo2") is not None
    hosts = [line.split()[1] for line in ctx.paths.ssh_config.read_text().splitlines() if line.startswith("Host ")]
    assert hosts == ["nb-demo2"], hosts
    assert [line.split()[0] for line in ctx.paths.known_hosts.read_text().splitlines()] == ["nb-demo2"]
    assert {rel.format(n="demo2") for rel in PER_INSTANCE} <= _files_of(nbcloud_home, "demo2")


def test_cloud_providers_say_they_power_their_machines() -> None:
    assert AwsProvider.manages_machines is True
    assert manages_machines(AwsProvider(session=None))  # type: ignore[arg-type]


def test_connect_to_an_unreachable_adopted_machine_does_not_suggest_start(tmp_path: Path) -> None:
    adopted_machine(tmp_path, "box")
    env = {"NBCLOUD_HOME": str(tmp_path), "NBCLOUD_USER_SSH_CONFIG": str(tmp_path / "ssh-config"),
           "NBCLOUD_QUIET": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "PYTHONPATH": str(Path(nbcloud.__file__).parents[1])}  # the nbcloud under test, not an installed one
    done = subprocess.run([sys.executable, "-m", "nbcloud.cli.app", "connect", "box", "--no-browser"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode != 0 and "unreachable" in done.stderr, done.stderr
    assert "nbcloud start" not in done.stderr and "nbcloud connect box" in done.stderr, done.stderr
