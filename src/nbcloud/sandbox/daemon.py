"""The sandbox daemon: moto's API, the hosts that realize its instances, the control API.

``python -m nbcloud.sandbox.daemon --dir D --subnet S --wheelhouse W [--mode loopback]`` (the client
starts it detached). moto changes state at once; hooks queue the real work (namespaces, init, teardown) for one
reconciler thread, so operations on an instance happen in the order the API saw them.

``--mode netns`` (root) gives each instance a network namespace; ``--mode loopback`` (no root, see loopback.py)
a 127.x address and processes of the current user, tracked by pid; ``--mode os`` (root, see nspawn.py) the network
namespace of netns mode with a container booting a real OS in it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import disk, ebs, firewall, nspawn
from .addresses import Addresses
from .cloud import REGION, MotoCloud, install_hooks, seed_images
from .control import ControlServer, InstanceSocket
from .faults import Faults
from .hosts import Network, SubnetBusy, instance_pids, kill_namespace_processes, lock_subnet
from .loopback import (
    MARKER_ENV,
    LoopbackNetwork,
    init_socket,
    instance_processes,
    kill_processes,
    login_user,
    service_ports,
    socket_address,
)
from .osboot import OsBoot
from .storage import Storage, Trash
from .unixsock import unix_address
from .userdata import parse_user_data, raw_user_data
from .wheelhouse import UvCacheSeeder

__all__ = ["Sandbox", "main"]

log = logging.getLogger("nbcloud.sandbox")
SRC_DIR = str(Path(__file__).resolve().parents[2])  # the directory holding the nbcloud package
SHIM_LINKS = ("shutdown", "poweroff", "halt", "reboot")
Membership = tuple[dict[str, list[str]], dict[str, list[Any]]]  # group id → member addresses, instance id → groups


def _uv_binary() -> str | None:
    """uv's real executable: the uv package's own when importable (a PATH entry may be a pyenv shim script,
    useless to instances and to another user), else the one on PATH."""
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def _report(instance: Any, name: str, code: int) -> None:
    """What DescribeInstances says: moto flips states at once; the sandbox reports them when they are true."""
    instance._state.name = name
    instance._state.code = code


@dataclass
class Host:
    instance_id: str
    backend: Any
    address: str | None = None  # the private address: on eth0, kept from RunInstances to termination
    public: str | None = None  # the public address: new at every start, none while stopped (loopback: address)
    state: str = "pending"  # pending | booting | running | stopping | stopped | terminated
    init: subprocess.Popen[bytes] | None = None
    link_up: bool = True
    boots: int = 0
    firewall: str = ""  # the ingress table last loaded into its namespace (see firewall.py)
    imds: subprocess.Popen[bytes] | None = None  # os mode: the IMDS process beside the container
    dhcp: Any = None  # os mode: the VPC's DHCP answer on the host end of its link (dhcp.DhcpResponder)
    loops: dict[str, str] = field(default_factory=dict)  # os mode: volume id -> its loop device while it runs


class Sandbox(OsBoot, Faults, Addresses):
    """The emulator: moto's state, the hosts that realize its instances, one reconciler applying their changes."""

    def __init__(self, sandbox_dir: Path, subnet: str, wheelhouse: str, uv_cache: str = "",
                 mode: str = "netns", image: str = "") -> None:
        self.dir = sandbox_dir
        self.uv_cache = uv_cache
        self.uv_seeder = (UvCacheSeeder(Path(uv_cache), sandbox_dir / "spare")
                          if uv_cache and mode in ("netns", "os") else None)
        self.mode = mode
        self.loopback = mode == "loopback"
        self.os_mode = mode == "os"
        self.image = Path(image) if image else None  # os mode: the root filesystem every instance's layer is over
        self.network: Network | LoopbackNetwork = LoopbackNetwork(subnet) if self.loopback else Network(subnet)
        # loopback instances log in as us, on ports we may bind; netns ones as ubuntu on AWS's ports
        self.login_user = login_user().pw_name if self.loopback else disk.USER
        self.ssh_port, self.imds_port = service_ports() if self.loopback else (22, 80)
        self.wheelhouse = wheelhouse
        self.shared = sandbox_dir / "shared"
        self.instances_dir = sandbox_dir / "instances"
        # terminated instances' disks (and deleted images, volumes, snapshots), deleted off the reconciler
        self.trash = Trash(sandbox_dir / "trash")
        self.volumes_dir = sandbox_dir / "volumes"
        self.hosts: dict[str, Host] = {}
        self.lock = threading.RLock()
        self.work: queue.Queue[tuple[str, str, dict[str, Any]]] = queue.Queue()
        self.stopped = threading.Event()
        self.cloud = MotoCloud()
        # what CreateImage copies: an instance's root tree, or in os mode its layer over the machine's image
        root_disk = ((lambda i: nspawn.layer_root(self._instance_dir(i))) if self.os_mode
                     else (lambda i: self._instance_dir(i) / "root"))
        self.storage = Storage(sandbox_dir, self.volumes_dir, root_disk, discard=self.trash.discard)

    # setup -------------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        for sub in ("shims", "bin", "control"):
            (self.shared / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(self.shared / sub, 0o755)
        os.chmod(self.shared, 0o755)
        cache = self.shared / "uv-cache"
        if cache.is_symlink():
            cache.unlink()
        if self.uv_cache:
            cache.symlink_to(self.uv_cache)  # init's bind mount follows it to the machine-wide cache
        else:
            cache.mkdir(exist_ok=True)
            if not self.loopback:  # loopback instances run as us: the cache is ours already
                os.chown(cache, disk.UID, disk.GID)
        self.instances_dir.mkdir(exist_ok=True)
        self.volumes_dir.mkdir(exist_ok=True)
        if self.uv_seeder is not None:
            self.uv_seeder.refill()
        os.chmod(self.volumes_dir, 0o700)
        shims_src = Path(__file__).with_name("shims")
        for shim in shims_src.iterdir():
            shutil.copyfile(shim, self.shared / "shims" / shim.name)
            os.chmod(self.shared / "shims" / shim.name, 0o755)
        for name in SHIM_LINKS:
            link = self.shared / "shims" / name
            link.unlink(missing_ok=True)
            link.symlink_to("systemctl")
        if self.loopback:  # commands only loopback instances get (see disk.loopback_env)
            (self.shared / disk.LOOPBACK_SHIMS).mkdir(mode=0o755, exist_ok=True)
            for shim in Path(__file__).with_name(disk.LOOPBACK_SHIMS).iterdir():
                shutil.copyfile(shim, self.shared / disk.LOOPBACK_SHIMS / shim.name)
                os.chmod(self.shared / disk.LOOPBACK_SHIMS / shim.name, 0o755)
        uv = _uv_binary()
        if uv:
            target = self.shared / "bin" / "uv"
            shutil.copyfile(os.path.realpath(uv), target)
            os.chmod(target, 0o755)
        # leftovers of a daemon that died: its namespaces, links, loop devices, instances (moto's state died with it)
        self.clear_host()
        nspawn.unmount_layers(self.instances_dir)  # never delete through a dead daemon's mounted layer
        # its instances' disks and its volumes' files too: no API call can name them again (snapshots and images
        # go in Storage); a killed daemon's volume used to stay here for good
        for leftover in [*self.instances_dir.iterdir(), *self.volumes_dir.iterdir()]:
            shutil.rmtree(leftover, ignore_errors=True)
        shutil.rmtree(self.trash.directory, ignore_errors=True)
        self.network.install_guard()
        install_hooks(self)
        self.cloud.start()
        seed_images(REGION)

    # hooks (moto's threads) --------------------------------------------------------------------------------
    def on_run(self, backend: Any, instances: list[Any]) -> None:
        with self.lock:
            for inst in instances:
                host = Host(inst.id, backend)
                self._addresses(host)
                self._assign(inst, host)
                self.hosts[inst.id] = host
                self.work.put(("boot", inst.id, {}))

    def on_start(self, backend: Any, instances: list[Any]) -> None:
        with self.lock:
            for inst in instances:
                host = self.hosts.setdefault(inst.id, Host(inst.id, backend))
                if host.state in ("running", "booting", "pending") and host.public:
                    self._assign(inst, host)
                    continue
                self._addresses(host)
                self._assign(inst, host)
                host.state = "pending"
                self.work.put(("boot", inst.id, {}))

    def on_stop(self, backend: Any, instances: list[Any]) -> None:
        with self.lock:
            for inst in instances:
                if inst.id in self.hosts:
                    self.hosts[inst.id].state = "stopping"
                    _report(inst, "stopping", 64)  # "stopped" only once the host is really down, as on EC2
                    self.work.put(("stop", inst.id, {"public": self.hosts[inst.id].public}))

    def on_terminate(self, backend: Any, instances: list[Any]) -> None:
        with self.lock:
            for inst in instances:
                if inst.id in self.hosts:
                    self.hosts[inst.id].state = "stopping"
                    _report(inst, "shutting-down", 32)
                    self.work.put(("terminate", inst.id, {"public": self.hosts[inst.id].public}))

    def on_reboot(self, backend: Any, instances: list[Any]) -> None:
        for inst in instances:
            if inst.id in self.hosts:
                self.work.put(("reboot", inst.id, {}))

    def on_attach(self, backend: Any, volume_id: str, instance_id: str) -> None:
        (self.volumes_dir / volume_id).mkdir(mode=0o755, exist_ok=True)
        if instance_id in self.hosts:
            self.work.put(("attach", instance_id, {"volume_id": volume_id}))

    def on_detach(self, backend: Any, volume_id: str, instance_id: str) -> None:
        if instance_id in self.hosts:
            self.work.put(("detach", instance_id, {"volume_id": volume_id}))

    def on_delete_volume(self, backend: Any, volume_id: str) -> None:
        self.work.put(("delete-volume", "", {"volume_id": volume_id}))

    def on_create_volume(self, backend: Any, volume: Any, snapshot_id: str | None) -> None:
        self.storage.on_create_volume(volume, snapshot_id)

    def on_create_snapshot(self, backend: Any, snapshot: Any) -> None:
        self.storage.on_create_snapshot(snapshot)

    def on_delete_snapshot(self, backend: Any, snapshot_id: str) -> None:
        self.storage.on_delete_snapshot(snapshot_id)

    def on_create_image(self, backend: Any, ami: Any, instance_id: str) -> None:
        self.storage.on_create_image(ami, instance_id)

    def on_deregister_image(self, backend: Any, ami_id: str) -> None:
        self.storage.on_deregister_image(ami_id)

    # reconciler --------------------------------------------------------------------------------------------
    def reconcile_forever(self) -> None:
        while not self.stopped.is_set():
            try:
                action, instance_id, args = self.work.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                getattr(self, "_do_" + action.replace("-", "_"))(instance_id, **args)
            except Exception:
                log.exception("%s %s failed", action, instance_id)
                host = self.hosts.get(instance_id)
                if action == "boot" and host is not None:
                    host.state = "failed"

    def _instance_dir(self, instance_id: str) -> Path:
        return self.instances_dir / instance_id

    def _volumes_of(self, instance: Any) -> list[str]:
        root_name = getattr(instance, "root_device_name", "/dev/sda1")
        return sorted(
            dev.volume_id for name, dev in instance.block_device_mapping.items()
            if name not in (root_name, "/dev/sda1", "/dev/xvda")
        )

    def _do_boot(self, instance_id: str) -> None:
        host = self.hosts[instance_id]
        inst = host.backend.get_instance(instance_id)
        if inst.state != "running" or host.state not in ("pending", "booting") or not host.address or not host.public:
            return
        host.state = "booting"
        if self.os_mode:
            self._boot_os(host, inst)
            return
        inst_dir = self._instance_dir(instance_id)
        if not (inst_dir / "root").is_dir():
            raw = raw_user_data(inst)
            key = host.backend.key_pairs.get(inst.key_name) if inst.key_name else None
            inst_dir.mkdir(parents=True, exist_ok=True)
            try:
                parsed = parse_user_data(raw)
            except ValueError as exc:
                log.warning("%s: user-data not understood: %s", instance_id, exc)
                parsed = parse_user_data(None)
            image_root = self.storage.image_root(inst.image_id)
            loopback_user = self.login_user if self.loopback else None
            if image_root is not None:  # a baked image: its root disk, made this instance's by cloud-init rules
                disk.prepare_root_from_image(inst_dir, image_root, key.material_public if key else None, raw,
                                             parsed, loopback_user=loopback_user)
            else:
                disk.prepare_root(inst_dir, key.material_public if key else None, raw, parsed,
                                  loopback_user=loopback_user)
            if self.uv_seeder is not None and parsed.scripts:  # only user-data installs at boot
                self.uv_seeder.seed(inst_dir / "root")
        volumes = self._volumes_of(inst)
        for volume_id in volumes:
            (self.volumes_dir / volume_id).mkdir(mode=0o755, exist_ok=True)
        facts = disk.BootFacts(
            instance_id=instance_id, instance_type=inst.instance_type, ami_id=inst.image_id,
            address=host.address, public_address=host.public, region=host.backend.region_name,
            availability_zone=getattr(inst._placement, "zone", None) or f"{host.backend.region_name}a",
            lifecycle="spot" if inst.lifecycle == "spot" else "on-demand",
            shared_dir=str(self.shared), wheelhouse=self.wheelhouse, volumes_dir=str(self.volumes_dir),
            volumes=tuple(volumes), mode=self.mode, login_user=self.login_user, ssh_port=self.ssh_port,
            imds_endpoint=(f"http://{host.address}:{self.imds_port}" if self.loopback
                           else "http://169.254.169.254"),
            marker=self.network.marker(instance_id) if isinstance(self.network, LoopbackNetwork) else "",
        )
        disk.update_boot(inst_dir, facts)
        self.network.create(instance_id, host.address, host.public)
        self.apply_firewall(host)  # before any service listens: a group admits only what its rules say
        host.link_up = True
        self._spawn_init(host)
        host.state = "running"
        host.boots += 1

    def apply_firewall(self, host: Host, membership: Membership | None = None) -> None:
        """Load the host's security-group filter into its namespace when it changed (netns mode only)."""
        if not isinstance(self.network, Network) or not host.address:
            return
        members, groups_of = membership if membership is not None else self._membership()
        rules = firewall.ingress_rules(groups_of.get(host.instance_id, []))
        text = firewall.render_ingress(rules, members, self.network.caller_ip)
        if text != host.firewall and firewall.apply(self.network.netns_name(host.instance_id), text):
            host.firewall = text

    def _membership(self) -> Membership:
        """Each group's member addresses and each live instance's groups: one look at moto per live instance."""
        with self.lock:
            live = [h for h in self.hosts.values() if h.address and h.state in ("pending", "booting", "running")]
        members: dict[str, list[str]] = {}
        groups_of: dict[str, list[Any]] = {}
        for other in live:
            with contextlib.suppress(Exception):  # moto may have dropped a terminated instance already
                groups = list(other.backend.get_instance(other.instance_id).security_groups)
                groups_of[other.instance_id] = groups
                for group in groups:
                    members.setdefault(group.id, []).append(other.address or "")
        return members, groups_of

    def firewall_forever(self) -> None:
        """Security groups change by API (rules, members): follow them once a second, one membership per sweep (per
        host, N² lookups that each scan every instance: a quarter of a core at idle with 50, beside their sshd)."""
        while not self.stopped.wait(1.0):
            with self.lock:
                running = [h for h in self.hosts.values() if h.state == "running"]
            if not running or not isinstance(self.network, Network):
                continue
            membership = self._membership()  # cannot raise: moto's answers are suppressed per instance
            for host in running:
                try:
                    self.apply_firewall(host, membership)
                except Exception:
                    log.exception("firewall of %s", host.instance_id)

    def _spawn_init(self, host: Host) -> None:
        inst_dir = self._instance_dir(host.instance_id)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": SRC_DIR, "LANG": "C.UTF-8"}
        init = [sys.executable, "-m", "nbcloud.sandbox.init", str(inst_dir)]
        if isinstance(self.network, LoopbackNetwork):
            env[MARKER_ENV] = self.network.marker(host.instance_id)
            env["USER"] = self.login_user
            argv = init
        else:
            argv = ["ip", "netns", "exec", self.network.netns_name(host.instance_id), "unshare", "--mount", "--uts",
                    "--propagation", "private", *init]
        with open(inst_dir / "init.log", "ab") as out:
            host.init = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                         start_new_session=True)
        # a later daemon (after this one died) finds the instance's processes from here (checked against reuse)
        (inst_dir / "init.pid").write_text(f"{host.init.pid}\n")
        threading.Thread(target=host.init.wait, daemon=True).start()

    def instance_pids(self, host: Host) -> list[int]:
        """The processes of a host: its namespace's (netns mode), or its init's tree and marked ones (loopback)."""
        if isinstance(self.network, LoopbackNetwork):
            return instance_processes(self._instance_dir(host.instance_id), self.network.marker(host.instance_id))
        netns = self.network.netns_name(host.instance_id)
        return instance_pids(netns) if os.path.exists(f"/run/netns/{netns}") else []

    def _ask_init(self, instance_id: str, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any] | None:
        import socket

        path = str(self._instance_dir(instance_id) / "root/run/nbcloud-sandbox/init.sock")
        if isinstance(self.network, LoopbackNetwork):
            path = socket_address(init_socket(self.network.marker(instance_id)))
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock, unix_address(path) as address:
                sock.settimeout(timeout)
                sock.connect(address)
                sock.sendall(json.dumps(request).encode() + b"\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            return json.loads(data) if data else None
        except (OSError, ValueError):
            return None

    def _halt(self, host: Host, keep_network: bool = False) -> None:
        """Stop services gracefully (as systemd would at shutdown), then kill everything in the namespace."""
        if self.os_mode:
            self._halt_os(host, keep_network)
            return
        if host.init is not None and host.init.poll() is None:
            self._ask_init(host.instance_id, {"cmd": "shutdown", "timeout": 5.0}, timeout=8.0)
        if isinstance(self.network, LoopbackNetwork):
            kill_processes(lambda: self.instance_pids(host))
        elif keep_network:
            netns = self.network.netns_name(host.instance_id)
            kill_namespace_processes(netns)
        else:
            self.network.destroy(host.instance_id, host.address)
        if host.init is not None:
            try:
                host.init.wait(timeout=2)
            except subprocess.TimeoutExpired:
                host.init.kill()
        host.init = None

    def _do_stop(self, instance_id: str, public: str | None = None) -> None:
        host = self.hosts[instance_id]
        self._halt(host)
        with self.lock:
            self._release(host, public, terminated=False)
            host.state = "stopped"
            inst = host.backend.get_instance(instance_id)
            self._assign(inst, host)  # a stopped instance has no public address on EC2
            _report(inst, "stopped", 80)

    def _do_terminate(self, instance_id: str, public: str | None = None) -> None:
        host = self.hosts[instance_id]
        self._halt(host)
        self.trash.discard(self._instance_dir(instance_id))
        with self.lock:
            self._release(host, public, terminated=True)
            host.state = "terminated"
            with contextlib.suppress(Exception):  # moto may have forgotten a terminated instance already
                _report(host.backend.get_instance(instance_id), "terminated", 48)

    def _do_reboot(self, instance_id: str) -> None:
        host = self.hosts[instance_id]
        if host.state != "running":
            return
        host.state = "booting"
        self._halt(host, keep_network=True)
        if self.os_mode:
            self._spawn_os(host, self._volumes_of(host.backend.get_instance(instance_id)))
        else:
            self._spawn_init(host)
        host.state = "running"
        host.boots += 1

    def _do_attach(self, instance_id: str, volume_id: str) -> None:
        if self.os_mode:
            self._attach_os(self.hosts[instance_id], volume_id)
            return
        self._do_attach_mount(instance_id, volume_id)

    def _do_attach_mount(self, instance_id: str, volume_id: str) -> None:
        """Mount the volume in the instance; during boot init's socket is not up yet: keep asking until it is.

        The boot (earlier in this queue) read the attachments moto had then; one that arrives later is applied
        here, from a thread so the reconciler does not wait on a booting instance.
        """
        host = self.hosts[instance_id]

        def apply() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and host.state in ("pending", "booting", "running"):
                reply = self._ask_init(instance_id, {"cmd": "mount-volume", "volume_id": volume_id})
                if reply is not None:
                    if reply.get("code") != 0:
                        log.warning("%s: mounting %s: %s", instance_id, volume_id, reply.get("err"))
                    return
                time.sleep(0.1)

        if host.state in ("pending", "booting", "running"):
            threading.Thread(target=apply, name=f"attach-{volume_id}", daemon=True).start()

    def _do_detach(self, instance_id: str, volume_id: str) -> None:
        if self.os_mode:
            self._detach_os(self.hosts[instance_id], volume_id)
        elif self.hosts[instance_id].state == "running":
            self._ask_init(instance_id, {"cmd": "unmount-volume", "volume_id": volume_id})

    def _do_delete_volume(self, _instance_id: str, volume_id: str) -> None:
        self.trash.discard(self.volumes_dir / volume_id)

    def status(self) -> dict[str, Any]:
        with self.lock:
            hosts = list(self.hosts.values())
        rows = []
        for host in hosts:
            if host.state == "terminated":
                continue
            namespace = None
            if isinstance(self.network, Network):
                netns = self.network.netns_name(host.instance_id)
                namespace = netns if os.path.exists(f"/run/netns/{netns}") else None
            rows.append({
                "instance_id": host.instance_id, "state": host.state, "address": host.public,
                "private_address": host.address,
                "ssh_port": self.ssh_port, "namespace": namespace, "pids": self.instance_pids(host),
                "init_pid": host.init.pid if host.init else None, "link": "up" if host.link_up else "down",
                "boots": host.boots,
            })
        guard = None  # loopback: 127/8 never leaves the machine, there is nothing to guard
        if isinstance(self.network, Network):
            guard = {"blackhole": self.network.guard_present(), "leaked_packets": self.network.leaked_packets(),
                     "nft_table": self.network.nft_table}
        return {"instances": rows, "api_faults": self.cloud.faults.pending(), "guard": guard}

    def shutdown(self) -> None:
        """Tear down every host and the guard; the daemon exits afterwards."""
        self.stopped.set()
        with self.lock:
            hosts = [h for h in self.hosts.values() if h.state not in ("stopped", "terminated")]
        threads = [threading.Thread(target=self._halt, args=(h,)) for h in hosts]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=15)
        self.clear_host()  # what a halt that timed out above left
        self.cloud.stop()

    def clear_host(self) -> None:
        """What this sandbox made on the machine outside its directory: namespaces, links, and (os mode) the
        volumes' loop devices."""
        if isinstance(self.network, LoopbackNetwork):
            self.network.cleanup_all(self.instances_dir)
        else:
            self.network.cleanup_all()
        if self.os_mode:
            ebs.detach_loops_under(self.volumes_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nbcloud-sandbox-daemon")
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--subnet", required=True)
    parser.add_argument("--wheelhouse", default="")
    parser.add_argument("--uv-cache", default="")
    parser.add_argument("--mode", choices=("netns", "loopback", "os"), default="netns")
    parser.add_argument("--image", default="", help="os mode: the root filesystem instances boot")
    parser.add_argument("--mode-reason", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    try:
        lock_subnet(args.subnet, f"{args.dir.resolve()} pid {os.getpid()}")  # held until the daemon exits
    except SubnetBusy as exc:
        log.error("%s", exc)
        raise SystemExit(3) from exc
    sandbox = Sandbox(args.dir.resolve(), args.subnet, args.wheelhouse, args.uv_cache, mode=args.mode,
                      image=args.image)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    try:
        sandbox.prepare()
        threading.Thread(target=sandbox.reconcile_forever, name="reconciler", daemon=True).start()
        threading.Thread(target=sandbox.firewall_forever, name="firewall", daemon=True).start()
        control = ControlServer(sandbox, done)
        sock = InstanceSocket(sandbox, sandbox.shared / "control" / "daemon.sock")
        info = {
            "endpoint_url": sandbox.cloud.endpoint_url, "region": REGION, "control_url": control.url,
            "caller_ip": sandbox.network.caller_ip, "subnet": sandbox.network.subnet, "mode": sandbox.mode,
            "mode_reason": args.mode_reason, "login_user": sandbox.login_user, "ssh_port": sandbox.ssh_port,
            "sandbox_dir": str(sandbox.dir), "prefix": sandbox.network.prefix, "pid": os.getpid(),
            "wheelhouse": args.wheelhouse, "uv_cache": args.uv_cache, "started_at": time.time(),
            "image": args.image or None,
        }
        tmp = sandbox.dir / ".sandbox.json.tmp"
        tmp.write_text(json.dumps(info, indent=2))
        os.replace(tmp, sandbox.dir / "sandbox.json")
        log.info("ready: %s", info)
        done.wait()
        log.info("shutting down")
        (sandbox.dir / "sandbox.json").unlink(missing_ok=True)
        sock.close()
        sandbox.shutdown()
        control.close()
    except BaseException:
        log.exception("daemon failed")
        sandbox.clear_host()
        (sandbox.dir / "sandbox.json").unlink(missing_ok=True)
        raise


if __name__ == "__main__":
    main()
