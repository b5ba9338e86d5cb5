"""`ssh NAME -- CMD` and `logs NAME` for scripts: one command on the instance, its output captured."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import RemoteError, UsageError
from ..remote.machine_root import SH_ROOT
from ..ssh import session
from .context import Context
from .instances import require_running

__all__ = ["CommandResult", "LogResult", "check_reachable", "explain_unreachable", "log_command", "read_log",
           "run_command"]

LOGS = ("jupyter", "bootstrap", "agent", "gateway")


@dataclass(frozen=True)
class CommandResult:
    name: str
    command: str
    exit_code: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class LogResult:
    name: str
    log: str
    lines: list[str]


def log_command(log: str, lines: int, follow: bool) -> str:
    """The shell command that prints one of nbcloud's logs on the instance (NBCLOUD_ROOT: a loopback sandbox)."""
    if log not in LOGS:
        raise UsageError(f"no log named {log!r}", f"pick one of {', '.join(LOGS)}")
    return f"tail -n {int(lines)} {'-F ' if follow else ''}\"{SH_ROOT}/var/log/nbcloud/{log}.log\""


def check_reachable(ctx: Context, name: str) -> None:
    """Before an ssh to ``name``: when the local record says it is not running (`nbcloud stop`, or a `status` that
    saw the agent's stop), ask the cloud and refuse in one line if it agrees. A running record costs no cloud call,
    so `ssh`/`logs` stay as fast as plain ssh."""
    ctx.key_path(name)
    if ctx.record(name).state not in (None, "running"):
        require_running(ctx, name)


def explain_unreachable(ctx: Context, name: str, detail: str) -> RemoteError:
    """ssh could not connect: a stopped instance (stopped where nbcloud did not see it) is said so, from the cloud's
    answer (raised); otherwise the error to raise for a running one that does not answer."""
    require_running(ctx, name)
    return RemoteError(f"ssh nb-{name} could not connect: {detail}", f"`nbcloud status {name}` shows its state")


def _run(ctx: Context, name: str, command: str, timeout: float) -> session.SshResult:
    check_reachable(ctx, name)
    done = session.run(ctx.paths.ssh_config, f"nb-{name}", command, timeout=timeout, check=False)
    if done.returncode == session.SSH_CONNECT_FAILED:
        raise explain_unreachable(ctx, name, (done.stderr.strip().splitlines() or ["no answer"])[-1])
    return done


def run_command(ctx: Context, name: str, command: str, timeout: float = 24 * 3600) -> CommandResult:
    """Run ``command`` (a shell line, as `ssh nb-NAME CMD` would) and capture its exit code and output."""
    if not command.strip():
        raise UsageError("an interactive shell has no JSON form", f"give a command: `nbcloud ssh --json {name} -- CMD`")
    done = _run(ctx, name, command, timeout)
    return CommandResult(name, command, done.returncode, done.stdout, done.stderr)


def read_log(ctx: Context, name: str, log: str, lines: int, timeout: float = 60) -> LogResult:
    done = _run(ctx, name, log_command(log, lines, follow=False), timeout)
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RemoteError(f"could not read the {log} log of {name}: {detail}",
                          f"`nbcloud status {name}`; the {log} log exists once that part has started")
    return LogResult(name, log, done.stdout.splitlines())
