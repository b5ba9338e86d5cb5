"""Issue 18: the host key rotation script, run on a throwaway root tree (no sshd of ours is touched)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from nbcloud.remote.hostkey import ROTATE_SCRIPT, parse_rotated_key, rotate_host_key_command
from nbcloud.ssh.keys import generate_ed25519


def test_rotation_replaces_the_key_and_reloads_sshd(tmp_path: Path) -> None:
    ssh = tmp_path / "etc/ssh"
    ssh.mkdir(parents=True)
    launch = generate_ed25519("launch")
    (ssh / "ssh_host_ed25519_key").write_text(launch.private_openssh)
    (ssh / "ssh_host_ed25519_key.pub").write_text(launch.public_openssh + "\n")
    (tmp_path / "run").mkdir()
    stand_in = subprocess.Popen(["sleep", "60"])  # plays sshd: SIGHUP ends it
    try:
        (tmp_path / "run/sshd.pid").write_text(f"{stand_in.pid}\n")
        done = subprocess.run(["bash", "-c", ROTATE_SCRIPT, "rotate", str(tmp_path)], capture_output=True,
                              text=True, timeout=30, check=True)
        assert stand_in.wait(timeout=10) == -1  # SIGHUP
    finally:
        stand_in.kill()
    new = parse_rotated_key(done.stdout)
    assert new and new.startswith("ssh-ed25519 ") and new != launch.public_blob
    assert " ".join((ssh / "ssh_host_ed25519_key.pub").read_text().split()[:2]) == new
    assert (ssh / "ssh_host_ed25519_key").stat().st_mode & 0o777 == 0o600
    assert launch.private_openssh not in (ssh / "ssh_host_ed25519_key").read_text()
    assert not list(ssh.glob(".nbcloud-*")), "no temporary key left behind"


def test_parse_and_command() -> None:
    assert parse_rotated_key("noise\nnbcloud-host-key ssh-ed25519 AAAAC3x\n") == "ssh-ed25519 AAAAC3x"
    assert parse_rotated_key("nbcloud-host-key ssh-rsa AAAA\n") is None
    assert parse_rotated_key("") is None
    command = rotate_host_key_command()
    assert command.startswith("sudo -n bash -c ") and "NBCLOUD_ROOT" in command
