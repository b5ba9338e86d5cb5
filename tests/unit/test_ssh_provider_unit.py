"""The ssh provider's pure parts and refusals: no network (the only host touched is 127.0.0.1's closed port)."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers import adopted_machine

from nbcloud.errors import UsageError
from nbcloud.providers.base import manages_machines
from nbcloud.remote.adopted import install_script, preflight_script, uninstall_script
from nbcloud.ssh.keys import generate_ed25519
from nbcloud.ssh.target import (
    HostKey,
    SshTarget,
    fingerprint,
    known_host_keys,
    parse_host,
    parse_ssh_g,
    pinned_host_key,
    resolve_target,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("box", (None, "box", None)),
    ("ubuntu@10.0.0.5", ("ubuntu", "10.0.0.5", None)),
    ("me@box.example.org:2222", ("me", "box.example.org", 2222)),
    ("me@[2001:db8::1]:22", ("me", "2001:db8::1", 22)),
])
def test_parse_host(text: str, expected: tuple[str | None, str, int | None]) -> None:
    assert parse_host(text) == expected


@pytest.mark.parametrize("text", ["", "a@@b", "me@box:0", "me@box:99999", "Bad User@box", "box;rm -rf /",
                                  "x@-oProxyCommand=x", "-oProxyCommand=x", "-l@box"])
def test_parse_host_refuses(text: str) -> None:
    with pytest.raises(UsageError):
        parse_host(text)


def test_parse_ssh_g_keeps_repeated_keywords() -> None:
    options = parse_ssh_g("user me\nhostname 10.1.1.1\nport 2222\nidentityfile ~/.ssh/id_rsa\n"
                          "identityfile ~/.ssh/id_ed25519\n")
    assert options["identityfile"] == ["~/.ssh/id_rsa", "~/.ssh/id_ed25519"] and options["port"] == ["2222"]


def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    pair = generate_ed25519("x")
    (tmp_path / "k.pub").write_text(pair.public_openssh + "\n")
    listed = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "k.pub")], capture_output=True, text=True).stdout
    blob = pair.public_blob.split()[1]
    assert fingerprint(blob) == listed.split()[1]
    assert fingerprint(blob) == "SHA256:" + base64.b64encode(
        hashlib.sha256(base64.b64decode(blob)).digest()).decode().rstrip("=")


def _target(tmp_path: Path, known: Path, port: int = 22) -> SshTarget:
    return SshTarget(user="me", hostname="10.9.9.9", port=port, identity_file=tmp_path / "id",
                     known_hosts_files=(known,))


def test_known_hosts_lookup_reads_hashed_entries_and_prefers_ed25519(tmp_path: Path) -> None:
    ed = generate_ed25519("a").public_blob
    known = tmp_path / "known_hosts"
    known.write_text(f"10.9.9.9 ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7\n10.9.9.9 {ed}\nother {ed}\n")
    subprocess.run(["ssh-keygen", "-H", "-f", str(known)], capture_output=True, check=True)  # hash, as Debian does
    assert "10.9.9.9" not in known.read_text()
    keys = known_host_keys(_target(tmp_path, known))
    assert [k.key_type for k in keys] == ["ssh-ed25519", "ssh-rsa"]
    assert pinned_host_key(_target(tmp_path, known), None).public == ed
    # another port is another known_hosts name: [host]:port
    with pytest.raises(UsageError, match=r"no pinned host key for \[10.9.9.9\]:2222"):
        pinned_host_key(_target(tmp_path, known, port=2222), None)


def test_revoked_and_ca_lines_are_never_pinned(tmp_path: Path) -> None:
    ed = generate_ed25519("a").public_blob
    known = tmp_path / "known_hosts"
    known.write_text(f"@revoked 10.9.9.9 {ed}\n@cert-authority 10.9.9.9 {ed}\n")
    with pytest.raises(UsageError, match="no pinned host key"):
        pinned_host_key(_target(tmp_path, known), None)


def test_bad_fingerprint_form_is_refused_before_any_connection(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="invalid --host-key-fingerprint"):
        pinned_host_key(_target(tmp_path, tmp_path / "none"), "MD5:aa:bb")


def test_resolve_target_uses_the_users_ssh_config(tmp_path: Path) -> None:
    key = tmp_path / "id_work"
    key.write_text("k")
    key.chmod(0o600)
    config = tmp_path / "config"
    config.write_text(f"Host work\n  HostName 10.1.2.3\n  User alice\n  Port 2200\n  IdentityFile {key}\n"
                      f"  UserKnownHostsFile {tmp_path}/kh\n")
    target = resolve_target("work", None, config)
    assert (target.user, target.hostname, target.port, target.identity_file) == ("alice", "10.1.2.3", 2200, key)
    assert target.known_hosts_files == (tmp_path / "kh",) and target.address == "alice@10.1.2.3:2200"
    assert resolve_target("bob@work:2201", None, config).address == "bob@10.1.2.3:2201"
    with pytest.raises(UsageError, match="as root"):
        resolve_target("root@work", None, config)
    key.chmod(0o644)
    with pytest.raises(UsageError, match="readable by other users"):
        resolve_target("work", None, config)


def test_scripts_quote_names_and_never_touch_user_data() -> None:
    assert "sudo -n" in install_script("lab") and "adopted-by" in install_script("lab")
    removal = uninstall_script("lab", "alice")
    assert "/home/alice/.config/nbcloud" in removal and "/home/alice/data" not in removal
    assert "rm -rf /home/alice " not in removal and "rm -rf ~" not in removal
    assert "exit 10" in preflight_script("lab", "alice")


def test_capability_and_cloud_only_methods(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from nbcloud.providers.registry import adopts_hosts, get_provider

    monkeypatch.setenv("NBCLOUD_HOME", str(tmp_path))
    provider = get_provider("ssh")
    assert manages_machines(provider) is False and adopts_hosts("ssh") and not adopts_hosts("aws")
    assert manages_machines(object()), "providers that do not say are clouds that power their machines"
    for call in (lambda: provider.stop("x"), lambda: provider.start("x"), lambda: provider.instance_type("t3"),
                 provider.check_access):
        with pytest.raises(UsageError):
            call()
    assert provider.list_instances() == [] and provider.find("nope") is None


def test_bootstrap_env_must_be_a_json_object(monkeypatch: pytest.MonkeyPatch) -> None:
    from nbcloud.providers.ssh.provider import SshProvider

    monkeypatch.setenv("NBCLOUD_SSH_BOOTSTRAP_ENV", "[1]")
    with pytest.raises(UsageError, match="JSON object"):
        SshProvider()


def _nb(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"NBCLOUD_HOME": str(home), "NBCLOUD_USER_SSH_CONFIG": str(home / "ssh-config"), "NBCLOUD_QUIET": "1",
           "PATH": "/usr/bin:/bin", "HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "nbcloud.cli.app", *args], capture_output=True, text=True, env=env,
                          timeout=60)


@pytest.mark.parametrize(("args", "needle"), [
    (["up", "x", "--provider", "ssh"], "needs its address"),
    (["up", "x", "--host", "me@h", "-t", "g5.xlarge", "--spot"], "--instance-type, --spot cannot apply"),
    (["up", "x", "--identity-file", "k"], "go with --host"),
    (["up", "x", "--provider", "aws", "--host", "me@h"], "not for --provider aws"),
    (["up", "x", "--host", "root@127.0.0.1"], "as root"),
])
def test_cli_refusals_are_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    done = _nb(tmp_path, *args)
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(error) == 1 and needle in error[0], done.stderr
    assert "Traceback" not in done.stderr


def test_unpinned_host_is_refused_in_one_line(tmp_path: Path) -> None:
    key = tmp_path / "id"
    key.write_text(generate_ed25519("k").private_openssh)
    key.chmod(0o600)
    (tmp_path / "ssh-config").write_text(f"Host *\n  UserKnownHostsFile {tmp_path}/known_hosts\n")
    done = _nb(tmp_path, "up", "x", "--host", "me@127.0.0.1:1", "--identity-file", str(key), "--json")
    assert done.returncode == 2 and "no pinned host key for [127.0.0.1]:1" in done.stdout + done.stderr
    assert not (tmp_path / "keys" / "x").is_symlink(), "nothing is made before the key is pinned"


def test_hostkey_type_order() -> None:
    assert HostKey("ssh-ed25519", "AAAA").public == "ssh-ed25519 AAAA"


def test_down_forget_drops_an_adopted_machine_without_contacting_it(tmp_path: Path) -> None:
    users_key = adopted_machine(tmp_path, "gone")  # the link `up` makes; the key is not ours
    done = _nb(tmp_path, "down", "gone", "--forget", "--json")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "keys" / "gone").is_symlink() and users_key.read_text() == "key"
    assert _nb(tmp_path, "status", "--json").stdout.strip() == "[]"
