"""Network plumbing for sandbox instances: addresses, namespaces, veth pairs, the blackhole guard.

Addressing (every link is point-to-point, so a cut link can never leak to the real network):

* the host side of every veth carries the same ``/32``, the subnet's first address (the ``caller_ip``), with a
  ``/32`` route per instance (``ip route add <inst>/32 dev <veth> src <caller_ip>``);
* the instance side is ``eth0`` with ``<inst>/32``, a route to the caller IP and a default route through it;
* ``blackhole <subnet>`` is installed before any instance exists: when a veth goes down the kernel deletes its
  ``/32`` route and the blackhole catches the traffic instead of the default route out of ``eth0``.

Two addresses per instance, as on EC2: a private one from the subnet's lower half, the only one on ``eth0``, kept
from RunInstances to termination (veth names derive from it), and a public one from the upper half, new at every
start. The public address exists only in the host's NAT table (``ip nbcloud_nat_<prefix>``), as EC2's internet
gateway translates it: traffic to it is DNAT'ed to the private address (from the host and from other instances),
and an instance reaching another one's public address arrives from its own public address (SNAT), so a
security-group rule naming a group (members' private addresses) does not admit it — as on EC2.

Every object carries a short per-sandbox prefix (derived from the subnet), so two sandboxes on different subnets
never touch each other's namespaces or links.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "AddressPool",
    "Network",
    "SubnetBusy",
    "instance_pids",
    "kill_namespace_processes",
    "lock_subnet",
    "prefix_for_subnet",
]


def prefix_for_subnet(subnet: str) -> str:
    """Four hex characters naming a sandbox's objects (stable for a subnet, so a restart finds leftovers)."""
    net = ipaddress.ip_network(subnet, strict=False)
    return hashlib.sha1(str(net).encode()).hexdigest()[:4]


class AddressPool:
    """Hands out instance addresses of a subnet: never the network, broadcast or caller address.

    ``part`` is ``all`` of the subnet, its lower half (``private`` addresses) or its upper half (``public``).
    Addresses are not reused while others are free (a started instance gets a new public address, as on AWS).
    """

    def __init__(self, subnet: str, part: str = "all") -> None:
        self.network = ipaddress.ip_network(subnet, strict=False)
        if self.network.version != 4 or self.network.prefixlen > 28:
            raise ValueError(f"sandbox subnet must be an IPv4 network of /28 or larger, got {subnet}")
        self.caller_ip = str(self.network.network_address + 1)
        half = self.network.num_addresses // 2
        # offsets 0 and 1: the network and the caller; public ones skip the half's first (an x.y.128.0 confuses)
        self._first = half + 1 if part == "public" else 2
        self._end = half if part == "private" else self.network.num_addresses - 1  # exclusive: not the broadcast
        self._next = self._first
        self._used: set[int] = set()

    def offset(self, address: str) -> int:
        return int(ipaddress.ip_address(address)) - int(self.network.network_address)

    def allocate(self) -> str:
        for _ in range(self._end - self._first):
            off = self._next
            self._next = self._next + 1 if self._next + 1 < self._end else self._first
            if off not in self._used:
                self._used.add(off)
                return str(self.network.network_address + off)
        raise RuntimeError(f"sandbox subnet {self.network} has no free address")

    def release(self, address: str | None) -> None:
        if address:
            self._used.discard(self.offset(address))


class SubnetBusy(RuntimeError):
    """Another live sandbox holds this subnet (its daemon holds the lock)."""


def lock_subnet(subnet: str, owner: str) -> int:
    """Take the machine-wide lock of a subnet (held by the daemon for its lifetime); returns the fd."""
    import fcntl

    name = f"nbcloud-sandbox-{prefix_for_subnet(subnet)}.lock"
    if ipaddress.ip_network(subnet, strict=False).is_loopback:
        # loopback sandboxes of every user share 127/8: the lock lives where every user can take it
        path = os.path.join(tempfile.gettempdir(), name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            with contextlib.suppress(PermissionError):
                os.fchmod(fd, 0o666)  # whatever our umask: the next user must be able to open it too
        except PermissionError:  # another user's lock file, not writable for us: a read fd can still flock
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    else:
        fd = os.open(f"/run/{name}", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode(errors="replace").strip()
        os.close(fd)
        raise SubnetBusy(f"subnet {subnet} is used by another sandbox ({holder or 'unknown'})") from None
    with contextlib.suppress(OSError):  # the owner text is a courtesy for the error message above
        os.ftruncate(fd, 0)
        os.write(fd, owner.encode())
    return fd


def _run(args: list[str], check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, input=input_text)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


def instance_pids(netns: str) -> list[int]:
    result = _run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in result.stdout.split() if p.strip().isdigit()]


def kill_namespace_processes(netns: str, timeout: float = 3.0) -> None:
    """SIGTERM every process of the namespace, then SIGKILL (repeatedly: a supervisor may respawn) until none."""
    for pid in instance_pids(netns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while instance_pids(netns) and time.monotonic() < deadline:
        time.sleep(0.02)
    deadline = time.monotonic() + 5.0
    while (pids := instance_pids(netns)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


@dataclass(frozen=True)
class Link:
    netns: str
    host_veth: str
    address: str


class Network:
    """The host-side network objects of one sandbox (one subnet, one prefix)."""

    def __init__(self, subnet: str) -> None:
        self.pool = AddressPool(subnet, "private")
        self.public_pool = AddressPool(subnet, "public")
        self.subnet = str(self.pool.network)
        self.caller_ip = self.pool.caller_ip
        self.prefix = prefix_for_subnet(subnet)
        self.nft_table = f"nbcloud_sbx_{self.prefix}"
        self.nat_table = f"nbcloud_nat_{self.prefix}"
        self._public: dict[str, str] = {}  # instance id -> its public address while its link exists

    # names -------------------------------------------------------------------------------------------------
    def netns_name(self, instance_id: str) -> str:
        return f"nbsbx-{self.prefix}-{instance_id}"

    def veth_names(self, address: str) -> tuple[str, str]:
        off = self.pool.offset(address)
        return f"nb{self.prefix}h{off}", f"nb{self.prefix}i{off}"

    def owns_netns(self, name: str) -> bool:
        return name.startswith(f"nbsbx-{self.prefix}-")

    def owns_link(self, name: str) -> bool:
        return name.startswith(f"nb{self.prefix}h") or name.startswith(f"nb{self.prefix}i")

    # guard -------------------------------------------------------------------------------------------------
    def install_guard(self) -> None:
        """Blackhole the subnet (before any instance exists) and drop anything instances try to forward out."""
        _run(["ip", "route", "replace", "blackhole", self.subnet])
        rules = (
            f"table inet {self.nft_table} {{\n"
            "  chain forward {\n"
            "    type filter hook forward priority -10; policy accept;\n"
            # instance to instance (the sandbox's VPC): each destination's security-group filter decides
            f'    iifname "nb{self.prefix}h*" oifname "nb{self.prefix}h*" ip saddr {self.subnet} '
            f'ip daddr {self.subnet} accept\n'
            f"    ip saddr {self.subnet} drop\n"
            f"    ip daddr {self.subnet} drop\n"
            "  }\n"
            "  chain output {\n"
            "    type filter hook output priority -10; policy accept;\n"
            f'    ip daddr {self.subnet} oifname != "nb{self.prefix}h*" counter drop\n'
            "  }\n"
            "}\n"
        )
        _run(["nft", "delete", "table", "inet", self.nft_table], check=False)
        _run(["nft", "-f", "-"], input_text=rules)
        self._install_nat()

    def _install_nat(self) -> None:
        """The internet gateway's one-to-one NAT: maps filled per instance (create), empty until then.

        Only addresses in the maps match, so traffic of anything else on this machine is never translated.
        """
        nat = (
            f"table ip {self.nat_table} {{\n"
            "  map public_to_private { type ipv4_addr : ipv4_addr; }\n"
            "  map private_to_public { type ipv4_addr : ipv4_addr; }\n"
            # from this host (the caller): its own packets pass the output hook, not prerouting
            "  chain output { type nat hook output priority -100; policy accept;\n"
            "    dnat to ip daddr map @public_to_private\n  }\n"
            # from another instance (routed through the host)
            "  chain prerouting { type nat hook prerouting priority -100; policy accept;\n"
            "    dnat to ip daddr map @public_to_private\n  }\n"
            # an instance that reached a public address leaves through the gateway: it arrives from its public one
            "  chain postrouting { type nat hook postrouting priority 100; policy accept;\n"
            "    ct status dnat snat to ip saddr map @private_to_public\n  }\n"
            "}\n"
        )
        _run(["nft", "delete", "table", "ip", self.nat_table], check=False)
        _run(["nft", "-f", "-"], input_text=nat)

    def leaked_packets(self) -> int:
        """Packets to the subnet that tried to leave through another interface than our veths (dropped)."""
        out = _run(["nft", "list", "chain", "inet", self.nft_table, "output"], check=False).stdout
        for line in out.splitlines():
            if "counter packets" in line:
                return int(line.split("counter packets")[1].split()[0])
        return 0

    def remove_guard(self) -> None:
        _run(["ip", "route", "del", "blackhole", self.subnet], check=False)
        _run(["nft", "delete", "table", "inet", self.nft_table], check=False)
        _run(["nft", "delete", "table", "ip", self.nat_table], check=False)

    # per instance ------------------------------------------------------------------------------------------
    def create(self, instance_id: str, address: str, public: str | None = None) -> Link:
        """Namespace + veth + addresses + routes, in one `ip -batch` (a few milliseconds).

        ``address`` is the private address (on ``eth0``); ``public``, if any, is routed to the same veth and
        translated to ``address`` by the NAT table.
        """
        netns = self.netns_name(instance_id)
        host, inner = self.veth_names(address)
        self.destroy(instance_id, address)
        # inside first: the host route appears only when the instance end is up (no SYN into a dead link)
        _run(["ip", "-batch", "-"], input_text=f"netns add {netns}\n"
             f"link add {host} type veth peer name {inner} netns {netns}\n")
        inside = [
            f"link set {inner} name eth0",
            f"addr add {address}/32 dev eth0",
            "link set lo up",
            "addr add 169.254.169.254/32 dev lo",
            "link set eth0 up",
            f"route add {self.caller_ip}/32 dev eth0",
            f"route add default via {self.caller_ip} dev eth0",
        ]
        _run(["ip", "-n", netns, "-batch", "-"], input_text="\n".join(inside) + "\n")
        if public:  # before the public route: a SYN routed there before its translation exists would be tracked
            # untranslated, and its retransmissions would follow that entry past the translation, never answered
            self._public[instance_id] = public
            _run(["nft", "-f", "-"], input_text=(
                f"add element ip {self.nat_table} public_to_private {{ {public} : {address} }}\n"
                f"add element ip {self.nat_table} private_to_public {{ {address} : {public} }}\n"))
        outside = [
            f"addr add {self.caller_ip}/32 dev {host}",
            f"link set {host} up",
            f"route replace {address}/32 dev {host} src {self.caller_ip}",
        ]
        if public:  # a route the host's own connect() needs before its output hook translates the address
            outside.append(f"route replace {public}/32 dev {host} src {self.caller_ip}")
        _run(["ip", "-batch", "-"], input_text="\n".join(outside) + "\n")
        # routes packets between instances, for this link only (the machine-wide ip_forward stays as it is)
        with open(f"/proc/sys/net/ipv4/conf/{host}/forwarding", "w") as flag:
            flag.write("1\n")
        return Link(netns, host, address)

    def destroy(self, instance_id: str, address: str | None) -> None:
        netns = self.netns_name(instance_id)
        if os.path.exists(f"/run/netns/{netns}"):
            kill_namespace_processes(netns)
            _run(["ip", "netns", "del", netns], check=False)
        public = self._public.pop(instance_id, None)
        if address:
            host, _ = self.veth_names(address)
            if os.path.exists(f"/sys/class/net/{host}"):
                _run(["ip", "link", "del", host], check=False)
            _run(["ip", "route", "del", f"{address}/32", "dev", host], check=False)
            if public:
                _run(["ip", "route", "del", f"{public}/32", "dev", host], check=False)
                _run(["nft", "-f", "-"], check=False, input_text=(
                    f"delete element ip {self.nat_table} public_to_private {{ {public} }}\n"
                    f"delete element ip {self.nat_table} private_to_public {{ {address} }}\n"))

    def set_link(self, instance_id: str, address: str, up: bool) -> None:
        host, _ = self.veth_names(address)
        netns = self.netns_name(instance_id)
        _run(["ip", "link", "set", host, "up" if up else "down"])
        if up:
            # the kernel deleted the /32 routes with the carrier; put them back on both sides
            _run(["ip", "route", "replace", f"{address}/32", "dev", host, "src", self.caller_ip])
            if public := self._public.get(instance_id):
                _run(["ip", "route", "replace", f"{public}/32", "dev", host, "src", self.caller_ip])
            _run(["ip", "-n", netns, "route", "replace", f"{self.caller_ip}/32", "dev", "eth0"])
            _run(["ip", "-n", netns, "route", "replace", "default", "via", self.caller_ip, "dev", "eth0"])

    # cleanup -----------------------------------------------------------------------------------------------
    def own_namespaces(self) -> list[str]:
        if not os.path.isdir("/run/netns"):
            return []
        return sorted(n for n in os.listdir("/run/netns") if self.owns_netns(n))

    def own_links(self) -> list[str]:
        return sorted(n for n in os.listdir("/sys/class/net") if self.owns_link(n))

    def cleanup_all(self, namespaces: Iterable[str] | None = None) -> None:
        """Remove every namespace (and its processes), veth and route this sandbox made; then the guard."""
        for netns in namespaces if namespaces is not None else self.own_namespaces():
            kill_namespace_processes(netns)
            _run(["ip", "netns", "del", netns], check=False)
        for link in self.own_links():
            _run(["ip", "link", "del", link], check=False)
        self.remove_guard()

    def guard_present(self) -> bool:
        routes = _run(["ip", "route", "show", "type", "blackhole"], check=False).stdout
        return any(line.split()[1:2] == [self.subnet] for line in routes.splitlines())
