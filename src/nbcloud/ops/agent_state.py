"""`status` reads each running instance's agent state (why it is busy or idle, when it stops) over ssh.

The reads are started as soon as the store names the instances it last saw running, before the cloud is asked:
building the cloud client and DescribeInstances take 0.3–0.6 s, which the reads (a process and a handshake each,
waiting on the network) spend in parallel instead of after. The store is only a cache: the cloud's answer decides
what is shown. A read whose instance turns out not running is dropped (its ssh killed), one that went to an
address the cloud no longer reports is made again, and a running instance the store did not know is read then.
Nothing is kept across commands: every `status` shows what the agents say now.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import NbcloudError
from ..remote.machine_root import SH_ROOT
from ..ssh import session

if TYPE_CHECKING:
    from .context import Context
    from .lifecycle import InstanceView

__all__ = ["AGENT_STATE_TIMEOUT", "AgentReads", "merge_agent_state", "with_agent_state"]

#: each read is given this long in all (connect included) before its instance is shown as unknown. A healthy read
#: takes ~0.2 s; an unreachable instance must not hold `status` up. Up to AGENT_STATE_AT_ONCE reads run at once
#: (each is a process and a handshake, ~0.01 s of client CPU with the key exchange below, while on a real cloud each
#: mostly waits on the network), so N instances cost about one read, not N.
AGENT_STATE_TIMEOUT = 4.0
AGENT_STATE_CONNECT_TIMEOUT = 2
AGENT_STATE_AT_ONCE = 64
#: OpenSSH 9's default key exchange (sntrup761x25519, post-quantum) costs the client ~0.08 s of CPU per connection,
#: which made `status` grow by that much per running instance. Classical exchanges cost a fraction of it, and
#: among them OpenSSL's P-256 (assembly) is cheaper than OpenSSH's own portable curve25519, on both ends: measured
#: here per read (150 reads each), client 11.5 → 9.4 ms and sshd 16.8 → 14.6 ms of CPU, with AES-GCM (AES-NI). What
#: travels is the agent's idle state. curve25519 and ChaCha20 follow in the lists, for a server that refuses NIST
#: curves or AES (some hardening guides say so): the server takes the first of ours it has.
AGENT_STATE_SSH_OPTIONS = (
    "-o", "KexAlgorithms=ecdh-sha2-nistp256,curve25519-sha256,curve25519-sha256@libssh.org",
    "-o", "Ciphers=aes128-gcm@openssh.com,chacha20-poly1305@openssh.com",
)
AGENT_STATE_COMMAND = f"cat \"{SH_ROOT}/var/lib/nbcloud/agent-state.json\" 2>/dev/null || echo '{{}}'"


@dataclass(frozen=True)
class Plan:
    """What to do with the reads started from the store, once the cloud has answered."""

    keep: frozenset[str]  # started to the address the cloud reports for a running instance: their answer counts
    start: tuple[str, ...]  # running, and not started (unknown to the store then) or started to another address
    drop: frozenset[str]  # started, but the instance is not running (or not shown): nobody waits for them


def plan_reads(started: dict[str, str | None], running: dict[str, str | None]) -> Plan:
    """``started``: name → address each early read went to; ``running``: name → address of every running instance
    the table shows (managed here). A read to an old address (a stop and start moved it) can only fail (nobody
    there, or another host key) or time out: it is dropped and made again."""
    keep = {n for n, host in running.items() if n in started and started[n] == host}
    return Plan(keep=frozenset(keep), start=tuple(n for n in running if n not in keep),
                drop=frozenset(n for n in started if n not in keep))


class AgentReads:
    """The reads of one `status`: started early, merged into the rows once the cloud has said what runs.

    At most AGENT_STATE_AT_ONCE run at a time (each holds two pipes; macOS allows a process 256 files by
    default); the others wait for a place, and each read gets AGENT_STATE_TIMEOUT from its own start or from the
    cloud's answer, whichever is later.
    """

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._reads: dict[str, tuple[str | None, session.PendingSsh | None, float]] = {}  # in order of start
        self._waiting: dict[str, str | None] = {}

    def start(self, targets: Iterable[tuple[str, str | None]]) -> None:
        """Start reading (name, address it is expected at) at once, without waiting for any."""
        self._waiting.update(targets)
        self._fill()

    def merge(self, views: Sequence[InstanceView]) -> list[InstanceView]:
        """Each running row (managed here) with its agent's state; the reads nobody needs are stopped."""
        running = {v.name: v.host for v in views if v.state == "running" and v.managed_here}
        plan = plan_reads({n: r[0] for n, r in self._reads.items()} | self._waiting, running)
        for name in plan.drop:
            self._cancel(name)
        self.start((n, running[n]) for n in plan.start)
        answered = time.monotonic()
        states: dict[str, dict[str, Any]] = {}
        while self._reads:  # the oldest first; each one done makes room for a waiting one
            name = next(iter(self._reads))
            states[name] = self._result(name, answered)
            self._fill()
        return [merge_agent_state(v, states[v.name]) if v.name in states else v for v in views]

    def cancel(self) -> None:
        """Stop every read still running (`status` failed before it could use them)."""
        self._waiting.clear()
        for name in list(self._reads):
            self._cancel(name)

    def _fill(self) -> None:
        while self._waiting and len(self._reads) < AGENT_STATE_AT_ONCE:
            name = next(iter(self._waiting))
            host = self._waiting.pop(name)
            try:
                pending = session.start(self._ctx.paths.ssh_config, f"nb-{name}", AGENT_STATE_COMMAND,
                                        connect_timeout=AGENT_STATE_CONNECT_TIMEOUT, options=AGENT_STATE_SSH_OPTIONS)
            except (NbcloudError, OSError):
                pending = None  # no ssh client, or no process to be had: unknown, as an unreachable agent is
            self._reads[name] = (host, pending, time.monotonic())

    def _cancel(self, name: str) -> None:
        if name in self._waiting:
            del self._waiting[name]
            return
        _host, pending, _started = self._reads.pop(name)
        if pending is not None:
            pending.kill()

    def _result(self, name: str, answered: float) -> dict[str, Any]:
        _host, pending, started = self._reads.pop(name)
        if pending is None:
            return {}
        # an early read is not cut short by a slow cloud: its time runs from the answer at the earliest
        deadline = max(started, answered) + AGENT_STATE_TIMEOUT
        try:
            result = pending.finish(timeout=max(0.0, deadline - time.monotonic()))
            return json.loads(result.stdout or "{}") if result.returncode == 0 else {}
        except (NbcloudError, ValueError):
            return {}


def with_agent_state(ctx: Context, views: Sequence[InstanceView]) -> list[InstanceView]:
    """Read each running instance's agent state now (no early start), all at once, each bounded by a timeout."""
    return AgentReads(ctx).merge(views)


def merge_agent_state(view: InstanceView, state: dict[str, Any]) -> InstanceView:
    """The agent's state file (see nbcloud_agent.Agent.check) into the row; an unreadable one leaves it unknown."""
    if not state:
        return replace(view, idle_reason="agent unreachable: unknown")
    idle = state.get("idle_seconds")
    notice = state.get("spot_notice")
    stop_at = state.get("stop_at")
    try:  # the instance's word: a time no date can hold leaves it unknown, never fails `status`
        stops_at = datetime.fromtimestamp(float(stop_at), UTC).isoformat(timespec="seconds") if stop_at else None
    except (OverflowError, OSError, ValueError, TypeError):
        stops_at = None
    return replace(view, idle_seconds=float(idle) if idle is not None else None,
                   spot_notice=json.dumps(notice) if isinstance(notice, dict) else notice,
                   idle_reason=state.get("reason"), busy=state.get("busy"), stops_at=stops_at)

