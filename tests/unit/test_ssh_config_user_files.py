"""The user's own ~/.ssh: a symlinked config is edited where it points, ~/.ssh keeps its mode, gentle keepalives."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from nbcloud.config import paths
from nbcloud.ssh import config as ssh_config
from nbcloud.ssh.tunnel import Forward


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_symlinked_config_is_edited_through_the_link_and_dot_ssh_keeps_its_mode(nbcloud_home: Path,
                                                                                 tmp_path: Path) -> None:
    p = paths()
    dot_ssh = p.user_ssh_config.parent
    dot_ssh.mkdir(mode=0o755)
    os.chmod(dot_ssh, 0o755)
    dotfiles = tmp_path / "dotfiles" / "ssh"
    dotfiles.mkdir(parents=True)
    real = dotfiles / "config"
    real.write_text("Host old\n  User me\n")
    os.chmod(real, 0o644)
    p.user_ssh_config.symlink_to(real)

    assert ssh_config.ensure_include(p) is True

    assert p.user_ssh_config.is_symlink() and os.readlink(p.user_ssh_config) == str(real)
    assert real.read_text().splitlines()[1] == f'Include "{p.ssh_config}"' and "Host old" in real.read_text()
    assert mode(dot_ssh) == 0o755  # never chmod-ed
    assert mode(real) == 0o644  # the user's mode kept
    assert ssh_config.ensure_include(p) is False
    assert not list(dotfiles.glob(".config.*.tmp"))


def test_plain_config_in_an_existing_755_dot_ssh_keeps_the_mode(nbcloud_home: Path) -> None:
    p = paths()
    p.user_ssh_config.parent.mkdir(mode=0o755)
    os.chmod(p.user_ssh_config.parent, 0o755)
    p.user_ssh_config.write_text("Host old\n")
    assert ssh_config.ensure_include(p) is True
    assert mode(p.user_ssh_config.parent) == 0o755 and not p.user_ssh_config.is_symlink()


def test_a_missing_dot_ssh_is_made_private(nbcloud_home: Path) -> None:
    p = paths()
    assert ssh_config.ensure_include(p) is True
    assert mode(p.user_ssh_config.parent) == 0o700 and mode(p.user_ssh_config) == 0o600


def _readonly_run(directory: Path, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` with ``directory`` read-only (a read-only bind mount as root, as /nix/store is; else chmod)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    if os.geteuid() == 0:
        script = (f'mount --bind "{directory}" "{directory}" && mount -o remount,bind,ro "{directory}" && '
                  f'exec "{sys.executable}" -c "$0"')
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, code],
                              capture_output=True, text=True, env=env, timeout=60)
    os.chmod(directory, 0o555)
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    finally:
        os.chmod(directory, 0o755)


def test_an_unwritable_link_target_is_refused_with_the_include_line(nbcloud_home: Path, tmp_path: Path) -> None:
    p = paths()
    p.user_ssh_config.parent.mkdir()
    store = tmp_path / "store"
    store.mkdir()
    real = store / "ssh-config"
    real.write_text("Host old\n")
    p.user_ssh_config.symlink_to(real)
    code = ("from nbcloud.config import paths\nfrom nbcloud.ssh import config\nfrom nbcloud.errors import UsageError\n"
            "try:\n    config.ensure_include(paths())\nexcept UsageError as e:\n    print(e.one_line())\n"
            "else:\n    print('written')\n")
    done = _readonly_run(store, code)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith("error: cannot add nbcloud's Include") and f'Include "{p.ssh_config}"' in line, line
    assert "\n" not in line and real.read_text() == "Host old\n" and p.user_ssh_config.is_symlink()


def test_problem_is_none_for_a_writable_target(nbcloud_home: Path, tmp_path: Path) -> None:
    target = tmp_path / "x" / "config"
    assert ssh_config.include_problem(target, target) is None


def test_host_block_keepalive_is_gentle_but_the_tunnel_stays_aggressive(nbcloud_home: Path) -> None:
    p = paths()
    entry = ssh_config.SshEntry("nb-x", "10.0.0.5", "ubuntu", p.keys_dir / "x", p.known_hosts)
    ssh_config.write_entry(p, entry)

    def effective(argv: list[str]) -> dict[str, str]:
        # ssh -G prints the options in force (command line over config) and connects to nothing
        out = subprocess.run([argv[0], "-G", *argv[1:]], capture_output=True, text=True, check=True, timeout=30)
        return dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)

    interactive = effective(["ssh", "-F", str(p.ssh_config), "nb-x"])
    # an interactive `ssh nb-x` or a VS Code Remote-SSH session rides out a minute of stall
    assert int(interactive["serveraliveinterval"]) * int(interactive["serveralivecountmax"]) >= 60
    from nbcloud.ssh.supervisor import TunnelSupervisor

    sup = TunnelSupervisor("x", "nb-x", [Forward(18888, 8888, "jupyter")], p.ssh_config, p.tunnels_dir / "x.json",
                           p.tunnels_dir / "x.log", resolver=lambda: None)  # type: ignore[arg-type,return-value]
    tunnel = effective(sup.ssh_argv())
    # the tunnel still notices a dead link within 2 s x 2
    assert (tunnel["serveraliveinterval"], tunnel["serveralivecountmax"]) == ("2", "2")


def test_relay_ssh_marks_its_packets_as_a_plain_forward_would(nbcloud_home: Path) -> None:
    """ssh marks a session without a tty with the bulk IPQoS (throughput / cs1: Wi-Fi's background class) and a
    plain `ssh -N -L` with the interactive one: the relay's ssh carries the browser, so it asks for the latter."""
    p = paths()
    ssh_config.write_entry(p, ssh_config.SshEntry("nb-x", "10.0.0.5", "ubuntu", p.keys_dir / "x", p.known_hosts))

    def ipqos(argv: list[str]) -> list[str]:
        out = subprocess.run([argv[0], "-G", *argv[1:]], capture_output=True, text=True, check=True, timeout=30)
        return dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)["ipqos"].split()

    from nbcloud.ssh.supervisor import TunnelSupervisor

    sup = TunnelSupervisor("x", "nb-x", [Forward(18888, 8888, "jupyter")], p.ssh_config, p.tunnels_dir / "x.json",
                           p.tunnels_dir / "x.log", resolver=lambda: None)  # type: ignore[arg-type,return-value]
    sup._target()  # every attempt reads `ssh -G` first
    interactive = ipqos(sup.ssh_argv())[0]
    assert ipqos(sup.relay_argv()) == [interactive, interactive]


def test_a_user_config_that_is_nbcloud_own_file_is_refused_untouched(nbcloud_home: Path,
                                                                      monkeypatch) -> None:
    """NBCLOUD_USER_SSH_CONFIG naming nbcloud's own ssh_config made it include itself: every ssh failed with
    "Too many recursive configuration includes" and `up` waited out its whole SSH timeout (300 s)."""
    import pytest

    from nbcloud.errors import UsageError

    p = paths()
    p.ssh_config.parent.mkdir(parents=True)
    p.ssh_config.write_text("# Managed by nbcloud\n")
    monkeypatch.setenv("NBCLOUD_USER_SSH_CONFIG", str(p.ssh_config))
    with pytest.raises(UsageError, match="nbcloud's own"):
        ssh_config.ensure_include(paths())
    assert p.ssh_config.read_text() == "# Managed by nbcloud\n"
    # holding the Include line already (an earlier run wrote it) is no reason to accept it
    p.ssh_config.write_text(f'Include "{p.ssh_config}"\n')
    with pytest.raises(UsageError, match="nbcloud's own"):
        ssh_config.ensure_include(paths())
