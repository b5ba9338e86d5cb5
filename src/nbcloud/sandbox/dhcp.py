"""The VPC's DHCP for os-mode instances: answers on the host end of an instance's veth with its one address.

cloud-init's Ec2 datasource asks DHCP before anything else (EC2's VPC answers at once); without an answer it waits
for dhclient's timeout. The address is already set from outside (hosts.py), so the answer only has to agree with it:
the instance's address as a /32, the caller address as router and server. ``reply`` is pure (unit-tested).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import threading

__all__ = ["DhcpResponder", "reply"]

MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, ACK = 1, 2, 3, 5
LEASE_SECONDS = 3600
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


def _options(data: bytes) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    i = 0
    while i < len(data):
        code = data[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        if i + 1 >= len(data):
            break
        size = data[i + 1]
        found[code] = data[i + 2 : i + 2 + size]
        i += 2 + size
    return found


def reply(request: bytes, address: str, server: str) -> bytes | None:
    """The OFFER (to a DISCOVER) or ACK (to a REQUEST) giving ``address``/32; None for anything else."""
    if len(request) < 240 or request[0] != 1 or request[236:240] != MAGIC:
        return None
    options = _options(request[240:])
    kind = options.get(53, b"\0")[0]
    if kind not in (DISCOVER, REQUEST):
        return None
    you, me = ipaddress.IPv4Address(address).packed, ipaddress.IPv4Address(server).packed
    head = bytearray(request[:236])
    head[0] = 2  # BOOTREPLY
    head[8:12] = b"\0\0\0\0"  # secs
    head[16:20] = you  # yiaddr
    head[20:24] = me  # siaddr
    answer = OFFER if kind == DISCOVER else ACK
    opts = b"".join([
        bytes([53, 1, answer]), bytes([54, 4]) + me, bytes([51, 4]) + struct.pack("!I", LEASE_SECONDS),
        bytes([1, 4]) + b"\xff\xff\xff\xff", bytes([3, 4]) + me, b"\xff",
    ])
    return bytes(head) + MAGIC + opts


class DhcpResponder:
    """One instance's DHCP server: a UDP socket on port 67 bound to the host end of its veth, in a thread."""

    def __init__(self, device: str, address: str, server: str) -> None:
        self.address, self.server = address, server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, device.encode())
        self.sock.bind(("0.0.0.0", 67))
        threading.Thread(target=self._serve, name=f"dhcp-{device}", daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data, _peer = self.sock.recvfrom(4096)
            except OSError:
                return  # closed
            answer = reply(data, self.address, self.server)
            if answer is not None:
                with contextlib.suppress(OSError):
                    self.sock.sendto(answer, ("255.255.255.255", 68))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
