"""What counts as activity and when the agent stops the machine: pure functions over samples, /proc parsers.

Shipped beside nbcloud_agent.py at /opt/nbcloud/agent/ (standard library only; the instance's Python may be
anything from 3.8 up). Unit-tested without a machine: decide() over recorded sample sequences.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

BUSY_STATES = {"busy", "starting", "restarting"}
MARGIN_SECONDS = 60.0  # cost cap: stop this much (plus two checks) before the cap is reached



@dataclass(frozen=True)
class Sample:
    """What one check saw. ``jupyter_error`` set means Jupyter could not be read (then its part is unknown).

    Work and a person's input are activity: a busy kernel, code run or a notebook saved (``last_activity``), a
    keystroke on a terminal or an interactive ssh session (``last_input``: its pty's atime, as ``w`` shows it),
    CPU or GPU use, a hold. What only shows presence is recorded but is not activity: open notebook tabs
    (``connections``), Jupyter terminals, ssh connections (a held tunnel is one).
    """

    t: float
    jupyter_error: str | None = None
    busy_kernels: int = 0
    connections: int = 0  # open kernel websockets (a tab with a notebook): presence, not activity
    last_activity: float | None = None  # latest kernel message or notebook save
    terminals: int = 0
    ssh_connections: int = 0  # presence, not activity
    last_input: float | None = None  # latest keystroke on a pty of the instance's processes
    cpu_cores: float | None = None  # cores the instance's processes (the agent's aside) used since the last sample
    gpu_percent: float | None = None  # highest GPU utilisation (nvidia-smi), None without GPUs
    held: str | None = None  # `nbcloud hold`: why the user keeps it up


@dataclass(frozen=True)
class Settings:
    idle_stop_seconds: int | None = 3600
    max_cost_usd: float | None = None
    hourly_usd: float | None = None
    #: sustained CPU above this many cores (over one check period) is work: a nohup'd or tmux'd job
    cpu_busy_cores: float = 0.10
    gpu_busy_percent: float = 5.0


@dataclass(frozen=True)
class Decision:
    action: str  # "none" | "stop"
    idle_seconds: float
    reason: str
    busy: bool = False  # something counts as activity right now
    stop_in_seconds: float | None = None  # when the idle stop comes if nothing happens (None: never)


def _activity(sample: Sample, settings: Settings = Settings()) -> tuple[float | None, str]:
    """(time of the latest activity this sample proves, why). ``sample.t`` when something is going on now."""
    if sample.held:
        return sample.t, f"held ({sample.held})"
    if sample.jupyter_error:
        return sample.t, f"jupyter unreadable ({sample.jupyter_error}): counted as busy"
    if sample.busy_kernels:
        return sample.t, f"{sample.busy_kernels} kernel(s) busy"
    if sample.cpu_cores is not None and sample.cpu_cores >= settings.cpu_busy_cores:
        return sample.t, f"processes using {sample.cpu_cores:.2f} CPU cores"
    if sample.gpu_percent is not None and sample.gpu_percent >= settings.gpu_busy_percent:
        return sample.t, f"GPU {sample.gpu_percent:.0f}% busy"
    stamps = [(sample.last_input, "terminal input"), (sample.last_activity, "notebook activity")]
    known = [(min(at, sample.t), why) for at, why in stamps if at is not None]
    if known:
        return max(known)
    return None, ""


def presence(sample: Sample) -> str:
    """What is open but not counted (for the reason shown by `status`)."""
    parts = []
    if sample.connections:
        parts.append(f"{sample.connections} notebook tab(s)")
    if sample.terminals:
        parts.append(f"{sample.terminals} Jupyter terminal(s)")
    if sample.ssh_connections:
        parts.append(f"{sample.ssh_connections} ssh connection(s)")
    return f"; open but not activity: {', '.join(parts)}" if parts else ""


def decide(
    samples: list[Sample], now: float, settings: Settings, accrued_seconds: float = 0.0, check_period: float = 10.0
) -> Decision:
    """Stop or not, from the samples recorded since the agent started (oldest first). Pure."""
    latest, why = None, "no activity seen"
    for sample in samples:
        at, reason = _activity(sample, settings)
        if at is not None and (latest is None or at >= latest):
            latest, why = at, reason
    baseline = samples[0].t if samples else now  # idleness is never claimed beyond what the agent observed
    idle = max(0.0, now - max(baseline, latest if latest is not None else baseline))
    busy = bool(samples) and latest is not None and latest >= samples[-1].t
    if latest is not None and not busy:
        why = f"{why}, {max(0.0, now - latest):.0f}s ago"
    shown = why + (presence(samples[-1]) if samples else "")

    if settings.max_cost_usd is not None and settings.hourly_usd:
        # Stop while there is still margin: the next two checks and the shutdown itself cost money too.
        projected = (accrued_seconds + 2 * check_period + MARGIN_SECONDS) * settings.hourly_usd / 3600.0
        if projected >= settings.max_cost_usd:
            accrued = accrued_seconds * settings.hourly_usd / 3600.0
            spent = f"accrued ${accrued:.2f} at ${settings.hourly_usd:.4f}/h"
            return Decision("stop", idle, f"cost cap ${settings.max_cost_usd:.2f} reached ({spent})", busy, 0.0)
    if samples and samples[-1].jupyter_error and not samples[-1].held:
        return Decision("none", 0.0, _activity(samples[-1], settings)[1], True, None)
    if settings.idle_stop_seconds is None:
        return Decision("none", idle, f"idle stop off (last: {shown})", busy, None)
    left = max(0.0, settings.idle_stop_seconds - idle)
    if busy:
        return Decision("none", idle, f"busy: {shown}", True, float(settings.idle_stop_seconds))
    if idle >= settings.idle_stop_seconds:
        return Decision("stop", idle, f"idle for {idle:.0f}s (limit {settings.idle_stop_seconds}s; last: {shown})",
                        False, 0.0)
    return Decision("none", idle, f"idle {idle:.0f}s of {settings.idle_stop_seconds}s (last: {shown})", False, left)


#: while Jupyter does not answer (the instance is starting it), look again this often, at most STARTING_CHECKS
#: times in a row: `status` right after `up` then shows Jupyter as it is, not as the check before its start saw it
STARTING_PERIOD, STARTING_CHECKS = 1.0, 60


def next_period(last: Sample | None, period: float, unreadable_in_a_row: int) -> float:
    """Seconds until the next check: ``period``, or STARTING_PERIOD while the last check could not read Jupyter
    and fewer than STARTING_CHECKS checks in a row could not (then the period until Jupyter answers again)."""
    if last is not None and last.jupyter_error and unreadable_in_a_row < STARTING_CHECKS:
        return min(period, STARTING_PERIOD)
    return period


def unreadable_count(last: Sample | None, count: int) -> int:
    """Checks in a row that could not read Jupyter, after ``last``: one more, or 0 once it answered."""
    return count + 1 if last is not None and last.jupyter_error else 0


def prune(samples: list[Sample], settings: Settings = Settings()) -> list[Sample]:
    """Drop samples before the latest one that shows activity now: they cannot change ``decide``."""
    for index in range(len(samples) - 1, -1, -1):
        at, _ = _activity(samples[index], settings)
        if at is not None and at >= samples[index].t:
            return samples[index:]
    return samples


def parse_iso(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def summarize_jupyter(status: dict[str, Any], kernels: list[dict[str, Any]], terminals: list[dict[str, Any]],
                      saved: Iterable[str | None] = ()) -> tuple[int, int, float | None, int]:
    """(busy kernels, connections, latest activity, terminals) from jupyter_server 2.x answers.

    The latest activity is the kernels' last message and the open notebooks' last save (``saved``: their
    ``last_modified``). Not the server's own ``last_activity``: every API request moves it, and an open JupyterLab
    tab polls the API every few seconds, so it would count an untouched tab. Not the terminals' either: their
    output moves it; a keystroke shows on the terminal's pty instead.
    """
    busy = sum(1 for k in kernels if k.get("execution_state") in BUSY_STATES)
    connections = int(status.get("connections") or 0)
    stamps = [parse_iso(k.get("last_activity")) for k in kernels] + [parse_iso(text) for text in saved]
    known = [s for s in stamps if s is not None]
    return busy, connections, (max(known) if known else None), len(terminals)


# ---- processes: CPU and ptys of the instance's own processes (pure parsers; the scan is below)

PTS_MAJORS = range(136, 144)  # Unix98 ptys: /dev/pts/N


@dataclass(frozen=True)
class ProcStat:
    ppid: int
    tty_nr: int
    ticks: int  # utime + stime + cutime + cstime: its own CPU and its reaped children's
    start: int  # clock ticks after boot


def parse_stat(text: str) -> ProcStat | None:
    """The fields of /proc/PID/stat that matter here (the command name may hold spaces and parentheses)."""
    rest = text[text.rfind(")") + 2:].split()
    if len(rest) < 20 or rest[0] in ("Z", "X"):
        return None
    return ProcStat(ppid=int(rest[1]), tty_nr=int(rest[4]), ticks=sum(int(v) for v in rest[11:15]),
                    start=int(rest[19]))


def pts_number(tty_nr: int) -> int | None:
    """N of /dev/pts/N for a process's controlling terminal (0: none; a console or serial line: None)."""
    major = (tty_nr >> 8) & 0xFFF
    minor = (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    if tty_nr == 0 or major not in PTS_MAJORS:
        return None
    return (major - PTS_MAJORS.start) * 256 + minor


def cpu_cores(before: dict[int, ProcStat], after: dict[int, ProcStat], before_uptime_ticks: float,
              elapsed: float, hz: int) -> float | None:
    """Cores used between two scans: the growth of each process seen twice, all of a process born in between."""
    if elapsed <= 0:
        return None
    ticks = 0
    for pid, now in after.items():
        then = before.get(pid)
        if then is not None and then.start == now.start:
            ticks += max(0, now.ticks - then.ticks)
        elif now.start >= before_uptime_ticks:
            ticks += now.ticks
    return ticks / hz / elapsed


def descendants(roots: set[int], parents: dict[int, int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = [r for r in roots if r in parents]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def _ipv4_of(hex_address: str) -> str | None:
    """The dotted IPv4 address of a /proc/net/tcp{,6} field (host byte order: little-endian here); None for IPv6."""
    if len(hex_address) == 32 and hex_address[:24].upper() == "0000000000000000FFFF0000":
        hex_address = hex_address[24:]  # an IPv4-mapped IPv6 address
    if len(hex_address) != 8:
        return None
    return ".".join(str(b) for b in reversed(bytes.fromhex(hex_address)))


def count_ssh(proc_net_text: str, port: int = 22, address: str | None = None) -> int:
    """Established TCP connections whose local port is ``port``, from /proc/net/tcp or /proc/net/tcp6 text.

    With ``address``, only those to that local address: instances that share one network (the sandbox without
    root) each have their own address and must not count each other's ssh sessions.
    """
    count = 0
    for line in proc_net_text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or ":" not in fields[1]:
            continue
        local_address, local_port = fields[1].rsplit(":", 1)
        if int(local_port, 16) != port or fields[3] != "01":  # 01 = TCP_ESTABLISHED
            continue
        if address is not None and _ipv4_of(local_address) != address:
            continue
        count += 1
    return count
