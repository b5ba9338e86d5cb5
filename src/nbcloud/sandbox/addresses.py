"""The addresses of sandbox instances, as EC2 gives them: a private one for the instance's life, a public one per
start (see hosts.py for how they are wired): a mixin of the daemon's :class:`~nbcloud.sandbox.daemon.Sandbox`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .hosts import Network
from .loopback import LoopbackNetwork

if TYPE_CHECKING:
    from .daemon import Host

__all__ = ["Addresses"]


class Addresses:
    """Allocation and release of instance addresses and what DescribeInstances shows of them."""

    network: Network | LoopbackNetwork

    def _assign(self, instance: Any, host: Host) -> None:
        """What DescribeInstances shows: PrivateIpAddress and PublicIpAddress (absent while stopped)."""
        nic = instance.nics[0]
        nic.public_ip = host.public
        nic.private_ip_address = host.address

    def _addresses(self, host: Host) -> None:
        """A (re)started host's addresses: a new public one; the private one stays for the instance's life.

        Loopback mode has one address per instance (its services listen on it, every 127/8 address is local and
        there is no NAT): it is both, and new at every start, as the public one is.
        """
        if isinstance(self.network, Network):
            host.address = host.address or self.network.pool.allocate()
            host.public = self.network.public_pool.allocate()
        else:
            host.address = host.public = self.network.pool.allocate()

    def _release(self, host: Host, public: str | None, terminated: bool) -> None:
        """Stop releases the public address the host had when asked to stop (``public``: a start may have given
        it a new one meanwhile); terminate the private one too (loopback: the one address)."""
        if isinstance(self.network, Network):
            self.network.public_pool.release(public)
            if terminated:
                self.network.pool.release(host.address)
        else:
            self.network.pool.release(public)
        if host.public == public:
            host.public = None
