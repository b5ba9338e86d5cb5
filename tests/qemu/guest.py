"""SSH into the QEMU guest as the login user, with the host key pinned from user-data (no trust on first use)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

__all__ = ["Guest"]


class Guest:
    def __init__(self, port: int, identity: Path, known_hosts: Path, user: str = "ubuntu") -> None:
        self.base = ["ssh", "-p", str(port), "-i", str(identity), "-o", f"UserKnownHostsFile={known_hosts}",
                     "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                     "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=6", "-o", "LogLevel=ERROR",
                     f"{user}@127.0.0.1"]

    def run(self, command: str, stdin: str | None = None, timeout: float = 300,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.base, command], input=stdin, capture_output=True, text=True, timeout=timeout,
                                stdin=None if stdin is not None else subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"guest `{command[:80]}` exited {result.returncode}: {result.stderr.strip()[-500:]}")
        return result

    def out(self, command: str, timeout: float = 300) -> str:
        return self.run(command, timeout=timeout).stdout.strip()

    def start(self, command: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*self.base, command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def wait_ssh(self, alive: object, timeout: float, not_boot: str = "") -> str:
        """Poll until a login works on a boot other than ``not_boot``; returns the boot id. ``alive()`` false
        (qemu exited) ends the wait at once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert callable(alive) and alive(), "qemu exited while the guest was booting"
            try:
                result = self.run("cat /proc/sys/kernel/random/boot_id", timeout=30, check=False)
            except subprocess.TimeoutExpired:
                continue
            boot = result.stdout.strip()
            if result.returncode == 0 and boot and boot != not_boot:
                return boot
            time.sleep(2)
        raise AssertionError(f"no SSH login within {timeout:.0f} s")
