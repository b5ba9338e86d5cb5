"""Running commands on an instance with OpenSSH and nbcloud's own ssh config.

``-F`` points at nbcloud's config only, so what the user's ~/.ssh/config says about other hosts cannot change
how nbcloud talks to its instances. Host keys are checked strictly against the pinned key.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import HostKeyError, RemoteError, UsageError

__all__ = ["PendingSsh", "SshResult", "run", "ssh_argv", "start", "wait_ssh"]

HOST_KEY_MISMATCH = ("REMOTE HOST IDENTIFICATION HAS CHANGED", "Host key verification failed")


@dataclass(frozen=True)
class SshResult:
    returncode: int
    stdout: str
    stderr: str


#: ssh's own exit status when it could not connect or authenticate (the remote command's status otherwise)
SSH_CONNECT_FAILED = 255
#: what ssh says (exit 255, like a host that does not answer yet) when its configuration is broken: retrying
#: cannot help, so waiting for SSH stops at once instead of at its timeout
SSH_CONFIG_BROKEN = ("bad configuration option", "too many recursive configuration includes")


def ssh_binary() -> str:
    found = shutil.which("ssh")
    if not found:
        raise UsageError("OpenSSH client `ssh` not found", "install it (Debian/Ubuntu: apt install openssh-client)")
    return found


def ssh_argv(config: Path, alias: str, *options: str) -> list[str]:
    return [ssh_binary(), "-F", str(config), "-o", "BatchMode=yes", *options, alias]


@functools.cache
def _setpriv() -> str | None:
    return shutil.which("setpriv") if sys.platform.startswith("linux") else None


def _die_with_parent() -> tuple[str, ...]:
    """A prefix that makes the child get SIGKILL when this process dies (Linux: util-linux's ``setpriv``, which sets
    PR_SET_PDEATHSIG and execs), so an ssh waiting on the instance for minutes never outlives a killed `up`.

    The death signal only covers a parent that dies after it was set: one killed between the fork and setpriv's
    prctl (a SIGKILL landing while ssh starts; CI saw it once) would leave the ssh running for its whole timeout.
    So a shell checks, after the prctl, that its parent is still this process, and only then execs ssh.

    Not a ``preexec_fn``: with one, CPython runs its at-fork hooks in the parent, and a Ctrl-C landing in them is
    lost ("Exception ignored in _releaseLock"). Elsewhere the child's own timeout bounds it.
    """
    found = _setpriv()
    if not found:
        return ()
    return (found, "--pdeathsig", "KILL", "--", "/bin/sh", "-c", 'test "$PPID" = "$0" && exec "$@"',
            str(os.getpid()))


def run(config: Path, alias: str, command: str, *, input: bytes | None = None, timeout: float = 60,
        check: bool = True, connect_timeout: int = 10, options: Sequence[str] = ()) -> SshResult:
    """``ssh alias command``; ``options``: more ``-o`` pairs for this call only."""
    argv = [*ssh_argv(config, alias, "-o", f"ConnectTimeout={connect_timeout}", *options), "--", command]
    try:
        done = subprocess.run([*_die_with_parent(), *argv], input=input, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise _timed_out(alias, command, timeout) from exc
    return _result(alias, done.returncode, done.stdout, done.stderr, check)


@dataclass
class PendingSsh:
    """An ``ssh alias command`` started by :func:`start`: :meth:`finish` waits for it, :meth:`kill` drops it."""

    alias: str
    command: str
    process: subprocess.Popen[bytes]

    def finish(self, timeout: float, check: bool = False) -> SshResult:
        """Its result; one that has not ended within ``timeout`` is killed (RemoteError). One that has ended is
        read whatever ``timeout`` says (even 0)."""
        try:
            out, err = self.process.communicate(timeout=None if self.process.poll() is not None else timeout)
        except subprocess.TimeoutExpired as exc:
            self.kill()
            raise _timed_out(self.alias, self.command, timeout) from exc
        return _result(self.alias, self.process.returncode, out, err, check)

    def kill(self) -> None:
        self.process.kill()
        self.process.communicate()  # reaped, and its pipes closed


def start(config: Path, alias: str, command: str, *, connect_timeout: int = 10,
          options: Sequence[str] = ()) -> PendingSsh:
    """``ssh alias command`` started and not waited for, so that many run at once and alongside other work. Its
    stdin is empty: of many at once, none may read the terminal."""
    argv = [*ssh_argv(config, alias, "-o", f"ConnectTimeout={connect_timeout}", *options), "--", command]
    process = subprocess.Popen([*_die_with_parent(), *argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    return PendingSsh(alias, command, process)


def _timed_out(alias: str, command: str, timeout: float) -> RemoteError:
    return RemoteError(f"ssh {alias}: `{command.split()[0]}` did not finish in {timeout:g} s",
                       f"check the instance with `nbcloud status` or `ssh {alias}`")


def _result(alias: str, returncode: int, stdout: bytes, stderr: bytes, check: bool) -> SshResult:
    result = SshResult(returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace"))
    if any(marker in result.stderr for marker in HOST_KEY_MISMATCH):
        raise HostKeyError(
            f"{alias} presented a host key that does not match the one nbcloud pinned at launch; refusing to connect")
    if check and result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RemoteError(f"ssh {alias}: command failed ({result.returncode}): {detail}",
                          f"`nbcloud logs {alias.removeprefix('nb-')} --bootstrap` shows the instance's setup log")
    return result


def wait_ssh(config: Path, alias: str, timeout: float, interval: float = 0.1, *, command: str = "true",
             input: bytes | None = None) -> float:
    """Wait until ``ssh alias COMMAND`` runs; returns the seconds it took. A host key mismatch fails at once.

    The probe can be the first real command (``up`` installs the instance's secrets with it), which saves a whole
    SSH handshake on the critical path. Only exit status 255 (ssh could not connect) is retried; a command that
    ran and failed raises at once.
    """
    start = time.monotonic()
    deadline = start + timeout
    last = ""
    while True:
        remaining = deadline - time.monotonic()
        result = run(config, alias, command, input=input, timeout=max(5.0, min(60.0, remaining + 1)), check=False,
                     connect_timeout=max(2, min(5, int(remaining) + 1)))
        if result.returncode == 0:
            return time.monotonic() - start
        last = (result.stderr.strip().splitlines() or [""])[-1]
        if result.returncode == SSH_CONNECT_FAILED and any(m in result.stderr.lower() for m in SSH_CONFIG_BROKEN):
            raise UsageError(f"ssh {alias}: its configuration is broken ({last})",
                             f"fix the ssh config it names (nbcloud's own is {config}), then retry")
        if result.returncode != SSH_CONNECT_FAILED:
            raise RemoteError(f"ssh {alias}: command failed ({result.returncode}): {last or 'no output'}",
                              f"`nbcloud logs {alias.removeprefix('nb-')} --bootstrap` shows the instance's setup log")
        if time.monotonic() + interval > deadline:
            raise RemoteError(f"{alias} did not accept SSH within {timeout:g} s ({last or 'no answer'})",
                              "the instance may still be booting or its network is blocked; "
                              "`nbcloud status` shows its state")
        time.sleep(interval)
