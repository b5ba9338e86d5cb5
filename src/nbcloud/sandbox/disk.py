"""An instance's root volume: ``<sandbox>/instances/<id>/root``, made once at launch, kept across stop/start.

It holds what the instance's init binds over the host paths: its own users (the host's system users plus
``ubuntu``, uid 1000, in ``sudo``), sudoers, sshd config and host keys, home, /opt, /var, /run, /tmp, /root.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .init import SHIM_PATH
from .userdata import UserData

__all__ = ["BootFacts", "loopback_env", "prepare_root", "prepare_root_from_image", "update_boot",
           "write_loopback_sshd_config", "write_sshd_config"]

UID = GID = 1000
USER = "ubuntu"
LOOPBACK_SHIMS = "shims-loopback"  # under the shared dir: commands only loopback instances get (sudo)


@dataclass(frozen=True)
class BootFacts:
    instance_id: str
    instance_type: str
    ami_id: str
    address: str  # the private address (local-ipv4, eth0, the hostname's)
    region: str
    availability_zone: str
    lifecycle: str
    shared_dir: str
    wheelhouse: str
    volumes_dir: str
    volumes: tuple[str, ...] = ()
    mode: str = "netns"  # or "loopback" (see loopback.py): init and sshd then run without namespaces
    login_user: str = USER
    ssh_port: int = 22
    imds_endpoint: str = "http://169.254.169.254"
    marker: str = ""  # loopback: the value of loopback.MARKER_ENV every process of the instance carries
    public_address: str | None = None  # public-ipv4 (changes at every start); None: the instance has none

    @property
    def hostname(self) -> str:
        return "ip-" + self.address.replace(".", "-")

    def to_json(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["volumes"] = list(self.volumes)
        data["hostname"] = self.hostname
        return data


def _write(path: Path, text: str | bytes, mode: int = 0o644, owner: tuple[int, int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    os.chmod(path, mode)
    if owner:
        os.chown(path, *owner)


def _system_entries(path: str, id_field: int) -> list[str]:
    lines = []
    for line in Path(path).read_text().splitlines():
        parts = line.split(":")
        if len(parts) > id_field and parts[id_field].isdigit():
            ident = int(parts[id_field])
            if (ident < 1000 or ident == 65534) and parts[0] != USER:
                lines.append(line)
    return lines


def _users(root: Path) -> None:
    passwd = [*_system_entries("/etc/passwd", 2), f"{USER}:x:{UID}:{GID}:Ubuntu:/home/{USER}:/bin/bash"]
    groups = []
    for line in _system_entries("/etc/group", 2):
        name, pw, gid, members = ([*line.split(":"), ""])[:4]
        if name in ("sudo", "adm"):
            members = ",".join(m for m in [*members.split(","), USER] if m)
        groups.append(f"{name}:{pw}:{gid}:{members}")
    groups.append(f"{USER}:x:{GID}:")
    shadow = [f"{line.split(':')[0]}:*:19000:0:99999:7:::" for line in passwd]
    _write(root / "etc/passwd", "\n".join(passwd) + "\n")
    _write(root / "etc/group", "\n".join(groups) + "\n")
    shadow_gid = next((int(g.split(":")[2]) for g in groups if g.startswith("shadow:")), 0)
    _write(root / "etc/shadow", "\n".join(shadow) + "\n", 0o640, (0, shadow_gid))
    sudoers = f'Defaults secure_path="{SHIM_PATH}"\n{USER} ALL=(ALL) NOPASSWD:ALL\n'
    (root / "etc/sudoers.d").mkdir(parents=True, exist_ok=True)
    _write(root / "etc/sudoers.d/90-cloud-init-users", sudoers, 0o440)


def _key_types(root: Path) -> list[str]:
    order = ["ed25519", "ecdsa", "rsa"]
    present = [p.name[len("ssh_host_"):-len("_key")] for p in (root / "etc/ssh").glob("ssh_host_*_key")]
    return sorted((k for k in present if k in order), key=order.index)


def loopback_env(root: Path, facts: BootFacts) -> dict[str, str]:
    """What every process of a loopback instance sees: its IMDS, its init, its marker, the shims first.

    Also what nbcloud's own remote scripts need on a machine whose "/" is a directory: ``NBCLOUD_ROOT`` (the
    bootstrap writes under it and, with ``NBCLOUD_ROOT_LIVE``, names it in the files it writes; ssh scripts find
    the token and logs there) and ``NBCLOUD_JUPYTER_IP`` (Jupyter listens on the instance's own 127.x address,
    not 127.0.0.1, which every instance on this host shares). The loopback shims (``sudo``: the instance's
    "root" is the current user) come before the common ones.
    """
    from .init import MOUNT_ROOT
    from .loopback import init_socket

    shared = Path(facts.shared_dir)
    return {
        "PATH": f"{shared / LOOPBACK_SHIMS}:" + SHIM_PATH.replace(str(MOUNT_ROOT), str(shared)),
        "NBCLOUD_ROOT": str(root),
        "NBCLOUD_ROOT_LIVE": "1",
        "NBCLOUD_JUPYTER_IP": facts.address,
        "NBCLOUD_SSH_PORT": str(facts.ssh_port),  # the agent counts ssh sessions on it (not 22 without root)
        # loopback forced as root: the instance's user is root, which Jupyter refuses unless told
        **({"NBCLOUD_JUPYTER_ALLOW_ROOT": "1"} if facts.login_user == "root" else {}),
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": facts.imds_endpoint,
        "NBCLOUD_SANDBOX_ROOT": str(root),
        "NBCLOUD_SANDBOX_INIT_SOCKET": init_socket(facts.marker),
        "NBCLOUD_SANDBOX_DAEMON_SOCKET": str(shared / "control/daemon.sock"),
        "NBCLOUD_SANDBOX_INSTANCE": facts.marker,
    }


# What every sandbox sshd allows: forwarding (the tunnel), keepalives like an instance's, many parallel logins
_SSHD_SESSIONS = """AllowTcpForwarding yes
AllowStreamLocalForwarding yes
X11Forwarding no
ClientAliveInterval 5
ClientAliveCountMax 3
UseDNS no
PrintMotd no
MaxStartups 100:30:200
AcceptEnv LANG LC_*
"""


def write_loopback_sshd_config(root: Path, facts: BootFacts) -> None:
    """An sshd the current user can run: its own port, address, host keys and pid file, absolute paths only.

    ``StrictModes no``: the instance's files live under the sandbox directory, which may sit below a
    world-writable /tmp that sshd's ownership checks would refuse. Sessions get the instance's environment.
    """
    host_keys = "\n".join(f"HostKey {root}/etc/ssh/ssh_host_{kind}_key" for kind in _key_types(root))
    env = " ".join(f"{k}={v}" for k, v in loopback_env(root, facts).items())
    config = f"""# written by the nbcloud sandbox (loopback mode)
Port {facts.ssh_port}
ListenAddress {facts.address}
{host_keys}
PidFile {root}/run/sshd.pid
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin {"prohibit-password" if facts.login_user == "root" else "no"}
AllowUsers {facts.login_user}
PubkeyAuthentication yes
AuthorizedKeysFile {root}/home/{facts.login_user}/.ssh/authorized_keys
{_SSHD_SESSIONS}SetEnv {env}
Subsystem sftp /usr/lib/openssh/sftp-server
"""
    _write(root / "etc/ssh/sshd_config", config)


def write_sshd_config(root: Path, key_types: list[str]) -> None:
    host_keys = "\n".join(f"HostKey /etc/ssh/ssh_host_{kind}_key" for kind in key_types)
    config = f"""# written by the nbcloud sandbox
Port 22
ListenAddress 0.0.0.0
{host_keys}
PidFile /run/sshd.pid
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
{_SSHD_SESSIONS}SetEnv PATH={SHIM_PATH}
Subsystem sftp /usr/lib/openssh/sftp-server
"""
    _write(root / "etc/ssh/sshd_config", config)


def _host_keys(root: Path, user_data: UserData) -> list[str]:
    ssh = root / "etc/ssh"
    provided = user_data.host_keys
    if not provided:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        key = ed25519.Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ).decode()
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ).decode()
        provided = {"ed25519": (private, f"{public} root@sandbox")}
    for kind, (private, public) in provided.items():
        _write(ssh / f"ssh_host_{kind}_key", private.rstrip("\n") + "\n", 0o600)
        _write(ssh / f"ssh_host_{kind}_key.pub", public.rstrip("\n") + "\n", 0o644)
    order = ["ed25519", "ecdsa", "rsa"]
    return sorted(provided, key=order.index)


def prepare_root(instance_dir: Path, public_key: str | bytes | None, raw_user_data: bytes | None,
                 user_data: UserData, loopback_user: str | None = None) -> None:
    """Make the root volume of a new instance (first launch only).

    ``loopback_user``: loopback mode, where nothing is bound over /etc: no users of its own, the login user's
    authorized key in ``home/<loopback_user>``, files owned by us, sshd's config written at each boot.
    """
    root = instance_dir / "root"
    for rel, mode in (("etc/systemd/system/multi-user.target.wants", 0o755), ("home", 0o755), ("opt", 0o755),
                      ("var/log", 0o755), ("var/lib/cloud/instance/scripts", 0o755), ("run/sshd", 0o755),
                      ("tmp", 0o1777), ("root", 0o700), ("srv", 0o755), ("etc/ssh", 0o755)):
        (root / rel).mkdir(parents=True, exist_ok=True)
        os.chmod(root / rel, mode)
    if loopback_user is None:
        _users(root)
    for name in ("moduli", "ssh_config"):
        if Path("/etc/ssh", name).is_file():
            shutil.copyfile(Path("/etc/ssh", name), root / "etc/ssh" / name)
    key_types = _host_keys(root, user_data)
    if loopback_user is None:
        write_sshd_config(root, key_types)
    home = root / "home" / (loopback_user or USER)
    if Path("/etc/skel").is_dir():
        shutil.copytree("/etc/skel", home, dirs_exist_ok=True)
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    if isinstance(public_key, bytes):
        public_key = public_key.decode()
    _write(home / ".ssh/authorized_keys", (public_key or "").strip() + "\n", 0o600)
    for path in [home, *home.rglob("*")] if loopback_user is None else []:
        os.lchown(path, UID, GID)
    os.chmod(home, 0o750)
    os.chmod(home / ".ssh", 0o700)
    _write(root / "var/log/cloud-init-output.log", "", 0o644)
    for index, (name, content) in enumerate(user_data.scripts):
        _write(root / "var/lib/cloud/instance/scripts" / f"{index:02d}-{name}", content, 0o700)
    if raw_user_data:
        _write(instance_dir / "user-data", raw_user_data, 0o600)


def prepare_root_from_image(instance_dir: Path, image_root: Path, public_key: str | bytes | None,
                            raw_user_data: bytes | None, user_data: UserData,
                            loopback_user: str | None = None) -> None:
    """A new instance of a baked image: a copy of the image's root disk, then what cloud-init does per instance.

    New host keys (user-data's; the image's are deleted), the new key pair's public key, this instance's user-data
    scripts; the previous instance's runtime files (/run, /tmp) and cloud-init's "boot finished" go. What the
    image's owner left in /home and /opt (the venv) stays: that is what baking is for.
    """
    from .storage import copy_tree

    root = instance_dir / "root"
    instance_dir.mkdir(parents=True, exist_ok=True)
    copy_tree(image_root, root, link=("opt",))
    for rel in ("run", "tmp"):
        shutil.rmtree(root / rel, ignore_errors=True)
    (root / "run/sshd").mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    for old in (root / "etc/ssh").glob("ssh_host_*"):
        old.unlink()
    key_types = _host_keys(root, user_data)
    if loopback_user is None:
        write_sshd_config(root, key_types)
    home = root / "home" / (loopback_user or USER)
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    if isinstance(public_key, bytes):
        public_key = public_key.decode()
    _write(home / ".ssh/authorized_keys", (public_key or "").strip() + "\n", 0o600,
           None if loopback_user else (UID, GID))
    scripts = root / "var/lib/cloud/instance/scripts"
    shutil.rmtree(scripts, ignore_errors=True)
    scripts.mkdir(parents=True)
    (root / "var/lib/cloud/instance/boot-finished").unlink(missing_ok=True)
    for index, (name, content) in enumerate(user_data.scripts):
        _write(scripts / f"{index:02d}-{name}", content, 0o700)
    _write(root / "var/log/cloud-init-output.log", "", 0o644)
    if raw_user_data:
        _write(instance_dir / "user-data", raw_user_data, 0o600)


def update_boot(instance_dir: Path, facts: BootFacts) -> None:
    """Facts that change at every boot: address, hostname, attached volumes (read by init and IMDS)."""
    root = instance_dir / "root"
    _write(root / "etc/hostname", facts.hostname + "\n")
    _write(root / "etc/hosts", f"127.0.0.1 localhost\n{facts.address} {facts.hostname}\n"
           "::1 localhost ip6-localhost ip6-loopback\n")
    _write(root / "etc/resolv.conf", "# no DNS in the sandbox\nnameserver 127.0.0.53\noptions timeout:1 attempts:1\n")
    if facts.mode == "loopback":  # the address (and so ListenAddress) changes at every start
        write_loopback_sshd_config(root, facts)
    data = facts.to_json()
    if facts.mode == "loopback":
        data["loopback_env"] = loopback_env(root, facts)
    tmp = instance_dir / "boot.json.tmp"
    _write(tmp, json.dumps(data, indent=2), 0o644)
    os.replace(tmp, instance_dir / "boot.json")
