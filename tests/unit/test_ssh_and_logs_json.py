"""`ssh --json NAME -- CMD` and `logs NAME --json` against a real sshd on 127.0.0.1 (no cloud)."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
pytestmark = pytest.mark.skipif(not (os.path.exists(SSHD) and shutil.which("ssh-keygen")), reason="needs OpenSSH")


def _port() -> int:
    base = int(os.environ.get("NBCLOUD_TEST_PORT_BASE", "40000"))
    for port in range(base + 900, base + 950):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port")


@pytest.fixture()
def box(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An instance named `box` in a private NBCLOUD_HOME: a real sshd on 127.0.0.1 logging in as this user, with
    nbcloud's key, pinned host key and Host block, and its logs under NBCLOUD_ROOT (as a loopback sandbox has)."""
    from nbcloud.config import paths
    from nbcloud.ssh import config as ssh_config
    from nbcloud.state import Record, Store

    home, root = tmp_path / "nbhome", tmp_path / "root"
    (root / "var" / "log" / "nbcloud").mkdir(parents=True)
    (root / "var" / "log" / "nbcloud" / "jupyter.log").write_text("".join(f"line {i}\n" for i in range(1, 8)))
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "host")], check=True)
    (home / "keys").mkdir(parents=True, mode=0o700)
    key = home / "keys" / "box"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (tmp_path / "authorized_keys").write_text((home / "keys" / "box.pub").read_text())
    port, user = _port(), getpass.getuser()
    (tmp_path / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {tmp_path / 'host'}", "UsePAM no", "StrictModes no",
        f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}", "PasswordAuthentication no",
        "PermitRootLogin prohibit-password", f"PidFile {tmp_path / 'sshd.pid'}", f"SetEnv NBCLOUD_ROOT={root}", ""]))
    env = {**os.environ, "NBCLOUD_HOME": str(home), "NBCLOUD_USER_SSH_CONFIG": str(tmp_path / "dot-ssh" / "config"),
           "NBCLOUD_QUIET": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    old = {k: os.environ.get(k) for k in ("NBCLOUD_HOME", "NBCLOUD_USER_SSH_CONFIG")}
    os.environ.update({k: env[k] for k in old})
    try:
        p = paths()
        store = Store(p.state_db)
        store.put(Record(name="box", provider="sandbox", region="us-east-1", instance_id="i-box", host="127.0.0.1",
                         user=user))
        store.close()
        ssh_config.pin_host_key(p, "nb-box", " ".join((tmp_path / "host.pub").read_text().split()[:2]))
        ssh_config.write_entry(p, ssh_config.SshEntry("nb-box", "127.0.0.1", user, key, p.known_hosts, port))
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(tmp_path / "sshd_config")], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    try:
        yield env
    finally:
        sshd.terminate()
        sshd.wait(timeout=10)


def _nb(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nbcloud.cli.app", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_ssh_json_captures_exit_code_and_output(box: dict[str, str]) -> None:
    done = _nb(box, "ssh", "--json", "box", "--", "echo out; echo err >&2; exit 3")
    assert done.returncode == 3, done.stderr
    doc = json.loads(done.stdout)
    assert (doc["exit_code"], doc["stdout"], doc["stderr"]) == (3, "out\n", "err\n")
    after = _nb(box, "ssh", "box", "--json", "--", "true")  # --json after NAME too
    assert after.returncode == 0 and json.loads(after.stdout)["exit_code"] == 0, after.stderr


def test_ssh_json_without_a_command_is_one_line(box: dict[str, str]) -> None:
    done = _nb(box, "ssh", "--json", "box")
    assert done.returncode == 2 and json.loads(done.stdout)["error"]["type"] == "UsageError"


def test_logs_json_prints_the_lines(box: dict[str, str]) -> None:
    done = _nb(box, "logs", "box", "--json", "-n", "3")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"name": "box", "log": "jupyter", "lines": ["line 5", "line 6", "line 7"]}
    text = _nb(box, "logs", "box", "-n", "2")
    assert text.returncode == 0 and text.stdout == "line 6\nline 7\n", text.stderr
    follow = _nb(box, "logs", "box", "--json", "-f")
    assert follow.returncode == 2 and "--follow" in json.loads(follow.stdout)["error"]["message"]
    missing = _nb(box, "logs", "box", "--agent", "--json")
    assert missing.returncode == 1 and "agent log" in json.loads(missing.stdout)["error"]["message"]
