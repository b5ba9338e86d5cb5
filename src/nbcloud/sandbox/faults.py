"""What an instance asks of the sandbox from inside (which host am I, power off) and the faults tests inject
(link down/up, reboot, spot notice): a mixin of the daemon's :class:`~nbcloud.sandbox.daemon.Sandbox`."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .hosts import Network
from .loopback import LoopbackNetwork

if TYPE_CHECKING:
    from .daemon import Host

__all__ = ["Faults"]


class Faults:
    """Instance requests and injected faults (a mixin of the daemon's Sandbox, whose state it uses)."""

    loopback: bool
    network: Network | LoopbackNetwork
    hosts: dict[str, Host]
    lock: threading.RLock

    if TYPE_CHECKING:
        def _instance_dir(self, instance_id: str) -> Path: ...

    def host_by_peer(self, pid: int) -> Host | None:
        if self.loopback or not isinstance(self.network, Network):
            return self._host_above(pid)  # no namespace to compare: walk up from the caller to an instance's init
        network = self.network
        try:
            peer = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            return None
        with self.lock:
            for host in self.hosts.values():
                try:
                    if os.stat(f"/run/netns/{network.netns_name(host.instance_id)}").st_ino == peer:
                        return host
                except OSError:
                    continue
        return None

    def _host_above(self, pid: int) -> Host | None:
        with self.lock:
            by_init = {h.init.pid: h for h in self.hosts.values() if h.init is not None and h.init.poll() is None}
        seen: set[int] = set()
        while pid > 1 and pid not in seen:
            if pid in by_init:
                return by_init[pid]
            seen.add(pid)
            try:
                stat = Path(f"/proc/{pid}/stat").read_bytes()
            except OSError:
                return None
            pid = int(stat[stat.rfind(b")") + 2 :].split()[1])
        return None

    def power(self, host: Host, action: str) -> str:
        inst = host.backend.get_instance(host.instance_id)
        if action == "reboot":
            host.backend.reboot_instances([host.instance_id])
            return "rebooting"
        if inst.instance_initiated_shutdown_behavior == "terminate":
            host.backend.terminate_instances([host.instance_id])
            return "terminating"
        host.backend.stop_instances([host.instance_id])
        return "stopping"

    def fault(self, instance_id: str, kind: str, seconds: float = 120.0) -> dict[str, Any]:
        host = self.hosts.get(instance_id)
        if host is None or host.state in ("terminated",):
            raise KeyError(f"no instance {instance_id} in this sandbox")
        if kind in ("link-down", "link-up"):
            if host.state != "running" or not host.address:
                raise ValueError(f"{instance_id} is {host.state}, not running")
            self.network.set_link(instance_id, host.address, up=kind == "link-up")
            host.link_up = kind == "link-up"
        elif kind == "reboot":
            host.backend.reboot_instances([instance_id])
        elif kind == "spot-notice":
            when = time.time() + seconds
            notice = {"action": "terminate", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))}
            target = self._instance_dir(instance_id) / "spot-action.json"
            target.write_text(json.dumps(notice))
            timer = threading.Timer(seconds, self._spot_reclaim, args=(host,))
            timer.daemon = True
            timer.start()
            return {"instance_id": instance_id, "fault": kind, **notice}
        else:
            raise ValueError(f"unknown fault {kind}")
        return {"instance_id": instance_id, "fault": kind}

    def _spot_reclaim(self, host: Host) -> None:
        notice = self._instance_dir(host.instance_id) / "spot-action.json"
        if host.state in ("running", "booting") and notice.exists():
            host.backend.terminate_instances([host.instance_id])
            # what EC2 says of a reclaimed spot instance (moto wrote a user-initiated reason)
            from moto.ec2.models.instances import StateReason

            host.backend.get_instance(host.instance_id).state_reason = StateReason(
                "Server.SpotInstanceTermination: Spot instance termination", "Server.SpotInstanceTermination")
