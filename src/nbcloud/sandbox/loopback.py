"""Loopback mode: sandbox instances without root, as processes of the current user on 127.x.y.z addresses.

Without root there are no network namespaces, veth links, routes or nftables. Each instance instead gets its own
address in a loopback subnet (Linux answers every 127/8 address on ``lo``, and any user may bind one), and runs
an unprivileged ``sshd`` and IMDS bound to that address. What differs from netns mode:

* **ports**: an unprivileged process cannot bind ports below ``ip_unprivileged_port_start`` (1024 by default),
  so sshd listens on :data:`HIGH_SSH_PORT` and IMDS on :data:`HIGH_IMDS_PORT` unless the machine lets us bind
  22 and 80 (root, or containers that lower the sysctl). The sandbox reports the port; the provider puts it in
  the instance it returns and nbcloud's ssh config writes ``Port``.
* **login user**: an unprivileged sshd can only log in the user it runs as, so the login user is the current
  user (``ubuntu`` exists only in netns mode, where a mount namespace makes it).
* **IMDS**: served on ``http://<address>:<imds port>``; instance processes get it as
  ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` (which AWS SDKs honour).
* **processes**: PIDs and the filesystem are the host's. An instance's processes are the descendants of its
  init (a child subreaper, so daemonized processes stay below it) plus any process of ours whose environment
  carries its :data:`MARKER_ENV` (survivors of an init that died). They are stopped by pid, never by name.
* **faults**: cutting a link needs nftables or ``ip link``, i.e. root: ``link-down``/``link-up`` are refused.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pwd
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from ..remote.agent.nbcloud_activity import descendants
from .hosts import AddressPool, prefix_for_subnet

__all__ = [
    "HIGH_IMDS_PORT",
    "HIGH_SSH_PORT",
    "LINK_FAULT_ERROR",
    "MARKER_ENV",
    "LoopbackNetwork",
    "init_socket",
    "instance_processes",
    "kill_processes",
    "login_user",
    "loopback_subnet",
    "marked_processes",
    "recorded_pids",
    "service_ports",
    "socket_address",
]

HIGH_SSH_PORT = 2222
HIGH_IMDS_PORT = 8169
MARKER_ENV = "NBCLOUD_SANDBOX_INSTANCE"
LINK_FAULT_ERROR = "link faults need netns mode (root): loopback instances share the host's network"
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def init_socket(marker: str) -> str:
    """The init's control socket in loopback mode, in the abstract namespace (``@`` for the leading NUL).

    A path under the sandbox directory can exceed AF_UNIX's 108 bytes (pytest's temporary directories do);
    an abstract name is short, needs no cleanup, and is unique per live sandbox (the marker holds its prefix).
    The init still checks each caller's uid.
    """
    return f"@nbcloud-sandbox/{marker}/init"


def socket_address(name: str) -> str:
    return "\0" + name[1:] if name.startswith("@") else name


def loopback_subnet(subnet: str) -> str:
    """The 127/8 subnet a loopback sandbox uses for ``subnet``: itself if already loopback, else 127.<rest>.

    10.240.0.0/16 becomes 127.240.0.0/16, so sandboxes kept apart by their netns subnets stay apart here too.
    """
    net = ipaddress.ip_network(subnet, strict=False)
    if net.version != 4:
        raise ValueError(f"sandbox subnet must be IPv4, got {subnet}")
    if net.subnet_of(_LOOPBACK):  # type: ignore[arg-type]
        return str(net)
    if net.prefixlen < 8:
        raise ValueError(f"a loopback sandbox needs a subnet of /8 or smaller, got {subnet}")
    low_bits = int(net.network_address) & 0x00FFFFFF
    return str(ipaddress.ip_network((int(_LOOPBACK.network_address) | low_bits, net.prefixlen)))


def _privileged_ports_allowed() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return False
    return start <= 22


def service_ports() -> tuple[int, int]:
    """(ssh, imds) ports: AWS's 22 and 80 when this process may bind them, else high ports."""
    return (22, 80) if _privileged_ports_allowed() else (HIGH_SSH_PORT, HIGH_IMDS_PORT)


def login_user() -> pwd.struct_passwd:
    """The account loopback instances log in: the current user (an unprivileged sshd can log in no other)."""
    try:
        return pwd.getpwuid(os.getuid())
    except KeyError:
        raise ValueError(f"uid {os.getuid()} has no passwd entry: sshd cannot log it in") from None


# processes -------------------------------------------------------------------------------------------------------
def _parent_map() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        # the command name (field 2) may hold spaces and parentheses: the parent pid follows the last ')'
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            parents[int(entry)] = int(fields[1])
    return parents


def marked_processes(marker_prefix: str) -> set[int]:
    """Our processes whose environment has ``MARKER_ENV`` starting with ``marker_prefix``."""
    uid = os.getuid()
    wanted = f"{MARKER_ENV}={marker_prefix}".encode()
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:  # gone, or not readable (sshd makes its session processes non-dumpable)
            continue
        if any(var.startswith(wanted) for var in environ.split(b"\0")):
            found.add(int(entry))
    return found


def recorded_pids(instance_dir: Path) -> list[int]:
    """The instance's init and sshd from their pid files, when they still are those processes.

    sshd rewrites its process title over its environment, so its marker cannot be read: its pid file (and
    its command line, which names the instance's config) is how an sshd whose init died is found.
    """
    found = []
    for pid_file in (instance_dir / "init.pid", instance_dir / "root/run/sshd.pid"):
        try:
            pid = int(pid_file.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if str(instance_dir).encode() in cmdline:
            found.append(pid)
    return found


def instance_processes(instance_dir: Path, marker: str) -> list[int]:
    """The init and sshd, everything below them, and any process carrying the instance's marker."""
    return sorted(descendants(set(recorded_pids(instance_dir)), _parent_map()) | marked_processes(marker))


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return None if fields[0] == b"Z" else fields[19].decode()


def kill_processes(find: Callable[[], Iterable[int]], timeout: float = 3.0) -> None:
    """SIGTERM what ``find`` returns, then SIGKILL (repeatedly: a supervisor may respawn) until nothing is left.

    Every process seen once stays a target (checked by start time against pid reuse): when the init dies
    first, its children move to pid 1 and are no longer below it.
    """
    seen: dict[int, str] = {}

    def targets() -> list[int]:
        for pid in find():
            started = _start_time(pid)
            if started is not None:
                seen.setdefault(pid, started)
        return [pid for pid, started in seen.items() if _start_time(pid) == started]

    _kill_targets(targets, timeout)


def _kill_targets(find: Callable[[], list[int]], timeout: float) -> None:
    for pid in find():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while list(find()) and time.monotonic() < deadline:
        time.sleep(0.02)
    deadline = time.monotonic() + 5.0
    while (pids := list(find())) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


class LoopbackNetwork:
    """The loopback counterpart of :class:`hosts.Network`: addresses and markers, no links, no guard.

    Nothing needs a guard: 127/8 traffic never leaves ``lo``.
    """

    def __init__(self, subnet: str) -> None:
        self.pool = AddressPool(loopback_subnet(subnet))
        self.subnet = str(self.pool.network)
        self.caller_ip = "127.0.0.1"  # the source address the kernel picks for 127/8 destinations
        self.prefix = prefix_for_subnet(self.subnet)
        self.nft_table = None

    def marker(self, instance_id: str = "") -> str:
        """``MARKER_ENV``'s value for an instance; with no id, the prefix shared by this sandbox's instances."""
        return f"nbsbx-{self.prefix}/{instance_id}"

    def install_guard(self) -> None:
        pass

    def guard_present(self) -> bool:
        return False

    def leaked_packets(self) -> int:
        return 0

    def create(self, instance_id: str, address: str, public: str | None = None) -> None:
        pass  # the address needs no setup: every 127/8 address is local (``public`` is the same one here)

    def set_link(self, instance_id: str, address: str, up: bool) -> None:
        raise ValueError(LINK_FAULT_ERROR)

    def cleanup_all(self, instances_dir: Path | None = None) -> None:
        """Stop what a dead daemon left running: recorded inits (and what is below them), marked processes."""
        roots: list[int] = []
        if instances_dir is not None and instances_dir.is_dir():
            for inst_dir in instances_dir.iterdir():
                roots.extend(recorded_pids(inst_dir))
        marker = self.marker()
        kill_processes(lambda: descendants(set(roots), _parent_map()) | marked_processes(marker))
