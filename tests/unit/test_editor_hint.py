"""The editor hint people look for: `code --remote ssh-remote+nb-NAME /home/USER` in `status NAME` (and --json)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import adopted_machine

from nbcloud.ssh.config import vscode_command


def _nb(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"NBCLOUD_HOME": str(home), "NBCLOUD_USER_SSH_CONFIG": str(home / "ssh-config"), "NBCLOUD_QUIET": "1",
           "PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "nbcloud.cli.app", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_status_name_shows_the_vscode_command(tmp_path: Path) -> None:
    adopted_machine(tmp_path, "box")  # login user `me`; unreachable, so status makes no connection
    text = _nb(tmp_path, "status", "box")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[-1] == "  vscode: code --remote ssh-remote+nb-box /home/me"
    doc = json.loads(_nb(tmp_path, "status", "box", "--json").stdout)
    assert doc["vscode"] == "code --remote ssh-remote+nb-box /home/me"


def test_vscode_command_uses_the_login_users_home() -> None:
    assert vscode_command("nb-lab", "ubuntu") == "code --remote ssh-remote+nb-lab /home/ubuntu"
    assert vscode_command("nb-lab", "root") == "code --remote ssh-remote+nb-lab /root"
