"""``--mode os``: an instance is a container booting a real OS (see nspawn.py) in its network namespace.

The daemon's :class:`~nbcloud.sandbox.daemon.Sandbox` takes these steps from this mixin: the instance's layer over
the image, its IMDS and DHCP answer, the container and its watcher, its EBS volumes as block devices (at boot and
attached or detached while it runs, see ebs.py), a reboot asked for inside, a clean halt.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import disk, ebs, nspawn
from .dhcp import DhcpResponder
from .hosts import Network, kill_namespace_processes
from .loopback import LoopbackNetwork
from .storage import Storage, copy_tree
from .userdata import raw_user_data
from .wheelhouse import UvCacheSeeder, wait_uv_cache_seed

if TYPE_CHECKING:
    from .daemon import Host

__all__ = ["OsBoot"]

log = logging.getLogger("nbcloud.sandbox")


class OsBoot:
    """os mode's boot, reboot and halt (a mixin of the daemon's Sandbox, whose state it uses)."""

    image: Path | None
    network: Network | LoopbackNetwork
    uv_seeder: UvCacheSeeder | None
    storage: Storage
    volumes_dir: Path
    shared: Path
    wheelhouse: str
    mode: str
    login_user: str
    ssh_port: int
    hosts: dict[str, Host]
    lock: threading.RLock
    work: queue.Queue[tuple[str, str, dict[str, Any]]]

    if TYPE_CHECKING:
        def _instance_dir(self, instance_id: str) -> Path: ...
        def _volumes_of(self, instance: Any) -> list[str]: ...
        def apply_firewall(self, host: Host) -> None: ...
        def _halt(self, host: Host, keep_network: bool = False) -> None: ...
        def power(self, host: Host, action: str) -> str: ...

    def _facts(self, host: Host, inst: Any, volumes: list[str]) -> disk.BootFacts:
        return disk.BootFacts(
            instance_id=host.instance_id, instance_type=inst.instance_type, ami_id=inst.image_id,
            address=host.address or "", public_address=host.public, region=host.backend.region_name,
            availability_zone=getattr(inst._placement, "zone", None) or f"{host.backend.region_name}a",
            lifecycle="spot" if inst.lifecycle == "spot" else "on-demand",
            shared_dir=str(self.shared), wheelhouse=self.wheelhouse, volumes_dir=str(self.volumes_dir),
            volumes=tuple(volumes), mode=self.mode, login_user=self.login_user, ssh_port=self.ssh_port,
        )

    def _boot_os(self, host: Host, inst: Any) -> None:
        """os mode: the instance's layer over the image (made at launch: only what EC2 itself holds, user-data
        and the key for IMDS; cloud-init inside does the rest), its namespace and IMDS, then the container."""
        assert self.image is not None and isinstance(self.network, Network)
        inst_dir = self._instance_dir(host.instance_id)
        if not nspawn.layer_root(inst_dir).is_dir():
            inst_dir.mkdir(parents=True, exist_ok=True)
            baked = self.storage.image_root(inst.image_id)
            if baked is not None:  # a baked image: its layer, copied (/opt linked), as EBS copies a snapshot
                copy_tree(baked, nspawn.layer_root(inst_dir), link=("opt",))
            raw = raw_user_data(inst)
            if raw:
                (inst_dir / "user-data").write_bytes(raw)
            key = host.backend.key_pairs.get(inst.key_name) if inst.key_name else None
            if key is not None:
                material = key.material_public
                text = material.decode() if isinstance(material, bytes) else str(material)
                (inst_dir / "public-key").write_text(text.strip() + "\n")
            nspawn.write_platform(nspawn.layer_root(inst_dir))
            if self.uv_seeder is not None and raw:  # the bootstrap installs from it; the layer is its root disk
                self.uv_seeder.seed(nspawn.layer_root(inst_dir))
        volumes = self._volumes_of(inst)
        facts = self._facts(host, inst, volumes)
        data = {**facts.to_json(), "key_name": inst.key_name or ""}
        (inst_dir / "boot.json").write_text(json.dumps(data, indent=2))
        self.network.create(host.instance_id, host.address or "", host.public)
        self.apply_firewall(host)
        host.link_up = True
        self._spawn_os(host, volumes)
        host.state = "running"
        host.boots += 1

    def _spawn_os(self, host: Host, volumes: list[str]) -> None:
        assert self.image is not None and isinstance(self.network, Network)
        inst_dir = self._instance_dir(host.instance_id)
        wait_uv_cache_seed(nspawn.layer_root(inst_dir))  # a background seed writes the layer: not while it runs
        netns = self.network.netns_name(host.instance_id)
        nspawn.mount_layer(inst_dir, self.image)
        host.imds = nspawn.spawn_imds(inst_dir, netns)
        if host.dhcp is None and host.address:
            try:
                host.dhcp = DhcpResponder(self.network.veth_names(host.address)[0], host.address,
                                          self.network.caller_ip)
            except OSError as exc:  # without it cloud-init waits for dhclient's timeout (3 s), nothing worse
                log.warning("%s: no DHCP answer: %s", host.instance_id, exc)
        spec = nspawn.ContainerSpec(host.instance_id, inst_dir, netns, self.shared, self.wheelhouse)
        proc = nspawn.spawn_container(spec)
        host.init = proc
        (inst_dir / "init.pid").write_text(f"{proc.pid}\n")
        if volumes:
            self._present_volumes(host, proc, volumes)
        threading.Thread(target=self._watch_container, args=(host, proc), daemon=True,
                         name=f"container-{host.instance_id}").start()

    def _present_volumes(self, host: Host, proc: subprocess.Popen[bytes], volume_ids: list[str]) -> None:
        """From a thread (the reconciler does not wait on a booting container): once the container's systemd
        runs, each volume becomes a loop device and a block device node inside it (ebs.py). The bootstrap's
        data unit waits for the by-id link, as it waits for a Nitro device to show up."""
        def run() -> None:
            pid1 = ebs.container_pid1(proc.pid)
            for volume_id in volume_ids:
                if pid1 is None or host.init is not proc:
                    return  # stopped meanwhile: the next boot presents it
                try:
                    volume = host.backend.get_volume(volume_id)
                    attachment = getattr(volume, "attachment", None)
                    if attachment is None or attachment.instance.id != host.instance_id:
                        continue  # detached while the container booted
                    size = int(volume.size)
                    device = ebs.attach_loop(ebs.backing_file(self.volumes_dir / volume_id, size))
                    with self.lock:
                        host.loops[volume_id] = device
                    if host.init is not proc:  # halted meanwhile: its halt may have missed this device
                        self._release_loop(host, volume_id)
                        return
                    name = ebs.present(pid1, device, volume_id)
                    log.info("%s: %s attached as %s (%s)", host.instance_id, volume_id, name, device)
                except Exception:
                    log.exception("%s: attaching %s", host.instance_id, volume_id)

        threading.Thread(target=run, daemon=True, name=f"volumes-{host.instance_id}").start()

    def _attach_os(self, host: Host, volume_id: str) -> None:
        """AttachVolume: at once on a running (or booting) container; a stopped one gets it at its next boot."""
        proc = host.init
        if proc is not None and proc.poll() is None:
            self._present_volumes(host, proc, [volume_id])

    def _detach_os(self, host: Host, volume_id: str) -> None:
        """DetachVolume: the node goes from the running container (what is still mounted is unmounted, as a
        forced detach would), then the loop device."""
        device = host.loops.get(volume_id)
        proc = host.init
        if device and proc is not None and proc.poll() is None:
            pid1 = ebs.container_pid1(proc.pid, timeout=0.0)
            if pid1 is not None:
                left = ebs.withdraw(pid1, device, volume_id)
                if left:
                    log.warning("%s: %s detached while mounted at %s", host.instance_id, volume_id, left)
        self._release_loop(host, volume_id)

    def _release_loop(self, host: Host, volume_id: str) -> None:
        with self.lock:
            device = host.loops.pop(volume_id, None)
        if device:
            ebs.detach_loop(device)

    def _watch_container(self, host: Host, proc: subprocess.Popen[bytes]) -> None:
        """The OS ended by itself (not by the daemon): a reboot boots the layer again; a poweroff or halt is an
        instance-initiated shutdown, which EC2 turns into a stop (or a terminate, per the instance's setting)."""
        code = proc.wait()
        with self.lock:
            ours = host.init is proc and host.state == "running"
            if ours:
                host.state = "booting" if code == nspawn.REBOOT_EXIT else "stopping"
        if not ours:
            return  # the daemon stopped it (stop, terminate, reboot, shutdown): that path reports it
        log.info("%s: the OS ended by itself (exit %s)", host.instance_id, code)
        if code == nspawn.REBOOT_EXIT:
            self.work.put(("reboot-os", host.instance_id, {}))
            return
        host.state = "running"  # power() reads it through the API path, which queues the stop
        with contextlib.suppress(Exception):
            self.power(host, "poweroff")

    def _do_reboot_os(self, instance_id: str) -> None:
        """A reboot asked for inside: the same layer boots again in the same namespace."""
        host = self.hosts[instance_id]
        if host.state != "booting":
            return
        self._halt(host, keep_network=True)
        self._spawn_os(host, self._volumes_of(host.backend.get_instance(instance_id)))
        host.state = "running"
        host.boots += 1

    def _halt_os(self, host: Host, keep_network: bool) -> None:
        """A clean poweroff of the container (systemd stops its units in order), then its IMDS and namespace."""
        proc, host.init = host.init, None
        if proc is not None:
            nspawn.stop_container(proc)
        for volume_id in list(host.loops):  # the container's mounts died with it: the devices are free
            self._release_loop(host, volume_id)
        assert isinstance(self.network, Network)
        if keep_network:
            kill_namespace_processes(self.network.netns_name(host.instance_id))
        else:
            if host.dhcp is not None:
                host.dhcp.close()
                host.dhcp = None
            self.network.destroy(host.instance_id, host.address)
        if host.imds is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                host.imds.wait(timeout=2)
            host.imds = None
        nspawn.unmount_layer(self._instance_dir(host.instance_id))
