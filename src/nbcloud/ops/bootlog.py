"""A failed bootstrap keeps its log: copied to this machine before the rollback removes the instance.

The copy lives under the user's data directory (``logs/NAME-LAUNCH-bootstrap.log``, 0600); the error names the
step that failed, the line that says why (pip's or uv's message) and the copy's path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..config import ensure_private_dir, write_private
from ..errors import NbcloudError
from ..remote.machine_root import SH_ROOT
from ..ssh import session
from .context import Context

__all__ = ["KEEP_LOGS", "BootLog", "failure_cause", "save_bootstrap_log"]

#: saved logs kept per machine (the oldest go first): a few failed launches' worth
KEEP_LOGS = 20

# the bootstrap's own log, then what cloud-init saw (a failure before the bootstrap's log existed shows there)
_FETCH = (
    f'r="{SH_ROOT}"; cat "$r/var/log/nbcloud/bootstrap.log" 2>/dev/null; '
    'echo "--- cloud-init-output.log (last 50 lines) ---"; '
    '{ tail -n 50 "$r/var/log/cloud-init-output.log" || sudo -n tail -n 50 /var/log/cloud-init-output.log; } '
    "2>/dev/null; true"
)
_MARK = "nbcloud-bootstrap: "
_FAILED = re.compile(r"nbcloud-bootstrap: step (\S+) failed \((.*)\)")
_DECORATION = re.compile(r"^[\s×╰─▶│|]+")
_SIGNAL = re.compile(r"(?i)^(error|cause|caused by|×|╰─▶|because|no matching|could not|fatal|e: )")


@dataclass(frozen=True)
class BootLog:
    path: Path
    cause: str | None  # "step venv failed: <why>", or None when the log names no failed step


def failure_cause(log: str) -> str | None:
    """The failed step and the output line(s) that say why, from a bootstrap log (pure)."""
    lines = log.split("--- cloud-init-output.log", 1)[0].splitlines()
    failed = [m for line in lines if (m := _FAILED.search(line))]
    if not failed:
        return None
    match = failed[-1]
    step = match.group(1)
    starts = [i for i, line in enumerate(lines) if f"{_MARK}step {step}: start" in line]
    begin = starts[-1] + 1 if starts else 0
    # the step's stderr goes to the log through a pipe: it may land just after the "failed" line
    output = [_DECORATION.sub("", line).strip() for line in lines[begin:] if _MARK not in line]
    output = [line for line in output if line]
    telling = [line for line in output if _SIGNAL.match(line)] or output[-2:]
    why = "; ".join(telling[:3])
    if len(why) > 400:
        why = why[:397] + "..."
    return f"step {step} failed: {why}" if why else f"step {step} failed ({match.group(2)})"


def save_bootstrap_log(ctx: Context, name: str, launch_id: str, timeout: float = 20) -> BootLog | None:
    """Copy the instance's bootstrap log here; None when the instance cannot be read (the rollback goes on)."""
    try:
        result = session.run(ctx.paths.ssh_config, f"nb-{name}", _FETCH, timeout=timeout, check=False,
                             connect_timeout=5)
    except NbcloudError:
        return None
    if not result.stdout.strip():
        return None
    folder = ensure_private_dir(ctx.paths.data_dir / "logs")
    path = folder / f"{name}-{launch_id}-bootstrap.log"
    write_private(path, result.stdout)
    _prune(folder)
    return BootLog(path, failure_cause(result.stdout))


def _prune(folder: Path) -> None:
    saved = sorted(folder.glob("*-bootstrap.log"), key=lambda p: p.stat().st_mtime)
    for old in saved[:-KEEP_LOGS]:
        old.unlink(missing_ok=True)
