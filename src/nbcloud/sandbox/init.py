"""The "init" of one sandbox instance: ``python -m nbcloud.sandbox.init <instance-dir>``.

Started by the daemon inside the instance's network namespace and a private mount (and UTS) namespace. It
imports everything it needs first (after the mounts the host's /root, where Python may live, is hidden), then:
mounts the instance's root volume over the host paths, serves IMDSv2, starts sshd, runs user-data scripts on the
first boot (once per instance, as cloud-init does) and the enabled services at every boot, and answers the
``systemctl`` shim and the daemon on ``/run/nbcloud-sandbox/init.sock``.

In loopback mode (``boot.json`` ``"mode": "loopback"``, see loopback.py) it runs as the current user with no
namespace: nothing is mounted, paths stay under ``<instance>/root``, IMDS and sshd listen on the instance's
127.x address, and it is a child subreaper so every process the instance starts stays below it.
"""

from __future__ import annotations

import ctypes
import encodings.ascii
import encodings.idna
import encodings.latin_1
import encodings.utf_8
import json
import os
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .imds import MetadataSource, serve_imds
from .services import ServiceManager
from .wheelhouse import wait_uv_cache_seed

__all__ = ["INIT_SOCKET", "MOUNT_ROOT", "SHIM_PATH", "main"]

# after the mounts, the host's /root (where this Python may live) is hidden: nothing may import lazily later
_PRELOADED = (encodings.ascii, encodings.idna, encodings.latin_1, encodings.utf_8)

MOUNT_ROOT = Path("/mnt/nbcloud-sandbox")  # inside an instance: the sandbox's shared files
INIT_SOCKET = "/run/nbcloud-sandbox/init.sock"
SHIM_PATH = f"{MOUNT_ROOT}/shims:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
VOLUME_ROOT = Path("/mnt/sandbox-volumes")

# the instance's root volume replaces these host paths (relative to <instance>/root); /root goes last
BIND_DIRS = ["etc/ssh", "etc/sudoers.d", "etc/systemd", "home", "opt", "var/log", "var/lib", "run", "tmp", "srv"]
BIND_FILES = ["etc/passwd", "etc/group", "etc/shadow", "etc/hosts", "etc/hostname", "etc/resolv.conf"]
SHIMMED = {"systemctl": "/usr/bin/systemctl", "journalctl": "/usr/bin/journalctl"}

MS_BIND, MS_REC, MS_PRIVATE, MNT_DETACH = 4096, 16384, 1 << 18, 2
PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str, target: str, fstype: str | None = None, flags: int = MS_BIND, data: str = "") -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                   data.encode() if data else None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def _umount(target: str) -> None:
    if _libc.umount2(target.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} init: {msg}", file=sys.stderr, flush=True)


def setup_mounts(instance_dir: Path, boot: dict[str, Any]) -> None:
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    # /mnt becomes a private tmpfs holding the sandbox's shared files and the volumes
    _mount("tmpfs", "/mnt", "tmpfs", 0, "mode=0755,size=16m")
    for sub in ("shims", "bin", "control", "uv-cache", "wheelhouse", "instance", ".volumes"):
        (MOUNT_ROOT / sub).mkdir(parents=True, exist_ok=True)
    (MOUNT_ROOT / ".volumes").chmod(0o700)
    VOLUME_ROOT.mkdir(parents=True, exist_ok=True)
    shared = Path(boot["shared_dir"])
    for sub in ("shims", "bin", "control", "uv-cache"):
        _mount(str(shared / sub), str(MOUNT_ROOT / sub))
    if boot.get("wheelhouse") and Path(boot["wheelhouse"]).is_dir():
        _mount(boot["wheelhouse"], str(MOUNT_ROOT / "wheelhouse"))
    _mount(str(instance_dir), str(MOUNT_ROOT / "instance"))
    _mount(boot["volumes_dir"], str(MOUNT_ROOT / ".volumes"))
    root = MOUNT_ROOT / "instance" / "root"  # host paths may be hidden by the binds below; this one never is
    for rel in BIND_DIRS:
        if Path("/", rel).is_dir() and (root / rel).is_dir():
            _mount(str(root / rel), f"/{rel}")
    for rel in BIND_FILES:
        if Path("/", rel).is_file() and (root / rel).is_file():
            _mount(str(root / rel), f"/{rel}")
    for shim, target in SHIMMED.items():
        if Path(target).is_file():
            _mount(str(MOUNT_ROOT / "shims" / shim), target)
    _mount(str(root / "root"), "/root")


def mount_volume(volume_id: str) -> None:
    source = MOUNT_ROOT / ".volumes" / volume_id
    target = VOLUME_ROOT / volume_id
    target.mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(target):
        _mount(str(source), str(target))


def unmount_volume(volume_id: str) -> None:
    target = VOLUME_ROOT / volume_id
    if os.path.ismount(target):
        _umount(str(target))
    if target.is_dir():
        target.rmdir()


def base_env() -> dict[str, str]:
    return {"PATH": SHIM_PATH, "LANG": "C.UTF-8", "TERM": "dumb"}


class Init:
    def __init__(self, instance_dir: Path) -> None:
        self.instance_dir = instance_dir
        self.boot = json.loads((instance_dir / "boot.json").read_text())
        self.loopback = self.boot.get("mode") == "loopback"
        # the instance's "/": the real one behind the mounts, or its root volume's directory in loopback mode
        self.root = instance_dir / "root" if self.loopback else Path("/")
        self.env = self._loopback_env() if self.loopback else base_env()
        self.services = ServiceManager(self.env, root=self.root, switch_user=not self.loopback)
        self.sshd: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()

    def _loopback_env(self) -> dict[str, str]:
        return {**base_env(), "HOME": str(self.root / "root"), **{
            key: str(value) for key, value in self.boot.get("loopback_env", {}).items()}}

    def path(self, absolute: str) -> Path:
        """An instance path (``/var/log/...``) as this process sees it."""
        return self.root / absolute.lstrip("/")

    def run(self) -> None:
        if self.loopback:
            _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans of the instance stay below this process
            imds_host, _, imds_port = self.boot["imds_endpoint"].split("//", 1)[1].rpartition(":")
            serve_imds(MetadataSource(self.instance_dir), imds_host, int(imds_port))
        else:
            setup_mounts(self.instance_dir, self.boot)
            self.instance_dir = MOUNT_ROOT / "instance"  # the host path may be hidden now
            _libc.sethostname(self.boot["hostname"].encode(), len(self.boot["hostname"]))
            serve_imds(MetadataSource(self.instance_dir))
        run_dir = self.path("/run/nbcloud-sandbox")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "instance-id").write_text(self.boot["instance_id"] + "\n")
        for volume_id in self.boot.get("volumes", []) if not self.loopback else []:
            try:
                mount_volume(volume_id)
            except OSError as exc:
                _log(f"volume {volume_id}: {exc}")
        self.start_sshd()
        self.serve_control()
        (run_dir / "ready").write_text(str(time.time()))
        _log(f"ready (sshd pid {self.sshd.pid if self.sshd else '-'})")
        self.services.start_enabled()
        threading.Thread(target=self.run_user_scripts, name="cloud-final", daemon=True).start()
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        while not self.stopping.wait(1.0):
            if self.sshd is not None and self.sshd.poll() is not None and not self.stopping.is_set():
                _log(f"sshd exited ({self.sshd.returncode}); restarting")
                self.start_sshd()
        self.shutdown()

    def start_sshd(self) -> None:
        log = open(self.path("/var/log/sshd.log"), "ab")  # noqa: SIM115
        self.sshd = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(self.path("/etc/ssh/sshd_config"))],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env, start_new_session=True,
        )
        log.close()

    def run_user_scripts(self) -> None:
        cloud = self.path("/var/lib/cloud")
        scripts_dir = cloud / "instance" / "scripts"
        sem = cloud / "instances" / self.boot["instance_id"] / "sem" / "config_scripts_user"
        status = {"status": "done", "errors": []}
        wait_uv_cache_seed(self.root)  # user-data installs from it; "boot finished" means it is there
        if not sem.exists() and scripts_dir.is_dir():
            sem.parent.mkdir(parents=True, exist_ok=True)
            sem.write_text(str(time.time()))
            (cloud / "instance" / "boot-finished").unlink(missing_ok=True)
            env = {**base_env(), "HOME": "/root", "USER": "root", "LOGNAME": "root", "SHELL": "/bin/bash"}
            if self.loopback:  # the scripts run as us, not root: our name, the instance's /root as home
                user = os.environ.get("USER") or str(os.getuid())
                env = {**self.env, "USER": user, "LOGNAME": user, "SHELL": "/bin/bash"}
            with open(self.path("/var/log/cloud-init-output.log"), "ab") as out:
                for script in sorted(scripts_dir.iterdir()):
                    script.chmod(0o700)
                    out.write(f"== running {script.name} ==\n".encode())
                    out.flush()
                    code = subprocess.run([str(script)], cwd=str(self.root), env=env, stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=out, start_new_session=True).returncode
                    out.write(f"== {script.name} exited {code} ==\n".encode())
                    if code != 0:
                        status = {"status": "error", "errors": [f"{script.name} exited {code}"]}
        (cloud / "data").mkdir(parents=True, exist_ok=True)
        (cloud / "data" / "status.json").write_text(json.dumps(status))
        (cloud / "instance").mkdir(parents=True, exist_ok=True)
        (cloud / "instance" / "boot-finished").write_text(f"{time.time()}\n")

    def shutdown(self) -> None:
        self.services.stop_all(timeout=5.0)
        if self.sshd is not None:
            self.sshd.terminate()

    # control socket ----------------------------------------------------------------------------------------
    def handle(self, request: dict[str, Any], uid: int) -> dict[str, Any]:
        cmd = request.get("cmd")
        name = request.get("unit", "")
        mutating = {"start", "stop", "restart", "enable", "disable", "daemon-reload", "mount-volume",
                    "unmount-volume", "shutdown"}
        if cmd in mutating and uid not in (0, os.getuid()):  # loopback: the instance's "root" is us
            return {"code": 4, "err": "Access denied (run it with sudo)\n"}
        try:
            if cmd == "daemon-reload":
                return {"code": 0}
            if cmd == "is-active":
                state = self.services.state(name)
                return {"code": 0 if state == "active" else 3, "out": state + "\n"}
            if cmd == "is-enabled":
                enabled = self.services.is_enabled(name)
                return {"code": 0 if enabled else 1, "out": ("enabled" if enabled else "disabled") + "\n"}
            if cmd == "status":
                active = self.services.state(name) == "active"
                return {"code": 0 if active else 3, "out": self.services.status_text(name) + "\n"}
            if cmd == "main-pid":
                return {"code": 0, "out": f"{self.services.main_pid(name) or 0}\n"}
            if cmd == "enable":
                self.services.enable(name)
                if request.get("now"):
                    self.services.start(name)
                return {"code": 0}
            if cmd == "disable":
                self.services.disable(name)
                if request.get("now"):
                    self.services.stop(name)
                return {"code": 0}
            if cmd in ("start", "stop", "restart"):
                getattr(self.services, cmd)(name)
                return {"code": 0}
            if cmd == "mount-volume":
                mount_volume(request["volume_id"])
                return {"code": 0}
            if cmd == "unmount-volume":
                unmount_volume(request["volume_id"])
                return {"code": 0}
            if cmd == "shutdown":
                self.services.stop_all(timeout=float(request.get("timeout", 5.0)))
                return {"code": 0}
            if cmd == "ping":
                return {"code": 0, "out": "pong\n"}
        except KeyError as exc:
            return {"code": 5, "err": f"Failed to {cmd} {name}: {exc.args[0] if exc.args else exc}\n"}
        except (OSError, ValueError) as exc:
            return {"code": 1, "err": f"Failed to {cmd} {name}: {exc}\n"}
        return {"code": 1, "err": f"Unknown command {cmd}\n"}

    def serve_control(self) -> None:
        init = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                creds = self.connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                _pid, uid, _gid = struct.unpack("3i", creds)
                line = self.rfile.readline()
                try:
                    reply = init.handle(json.loads(line), uid)
                except json.JSONDecodeError:
                    reply = {"code": 1, "err": "bad request\n"}
                self.wfile.write(json.dumps(reply).encode() + b"\n")

        if self.loopback:  # an abstract name (see loopback.init_socket): nothing to unlink or chmod
            name = self.env["NBCLOUD_SANDBOX_INIT_SOCKET"]
            server = socketserver.ThreadingUnixStreamServer("\0" + name[1:], Handler)
        else:
            Path(INIT_SOCKET).unlink(missing_ok=True)
            server = socketserver.ThreadingUnixStreamServer(INIT_SOCKET, Handler)
            os.chmod(INIT_SOCKET, 0o666)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="control", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m nbcloud.sandbox.init <instance-dir>", file=sys.stderr)
        raise SystemExit(2)
    os.umask(0o022)
    Init(Path(args[0]).resolve()).run()


if __name__ == "__main__":
    main()
