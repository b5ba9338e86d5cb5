"""The sandbox in loopback mode (no root): 127.x addresses, an unprivileged sshd, processes tracked by pid.

Two ways in: forced with ``NBCLOUD_SANDBOX_MODE=loopback`` (works as root or not), and, when the suite runs as
root, truly unprivileged: the CLI runs as a throwaway uid (``setpriv``) that exists only in a private mount
namespace's /etc/passwd, so the machine's user database is never touched. That namespace also exposes this
Python when it lives under a directory other users cannot enter (e.g. pyenv under /root).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import sandbox_logs
from tests.sandbox_fixtures import start_on_a_free_subnet

ROOT = Path(__file__).resolve().parents[2]
# loopback subnets of their own: never a netns test subnet, tried in order when a parallel run holds one
LOOPBACK_SUBNETS = ("127.71.0.0/16", "127.72.0.0/16", "127.73.0.0/16", "127.74.0.0/16")
THROWAWAY_UID = 64123
THROWAWAY_USER = "nbcloud-lbtest"
CLI = "import sys; sys.argv[0] = 'nbcloud'; from nbcloud.cli.app import main; main()"


def _skip_reason() -> str | None:
    if not os.path.exists("/usr/sbin/sshd") or shutil.which("ssh") is None:
        return "loopback mode needs OpenSSH's sshd and ssh"
    try:
        import moto  # noqa: F401
    except ImportError:
        return "the sandbox needs moto"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def _keypair(path: Path) -> tuple[Path, str]:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True)
    return path, Path(f"{path}.pub").read_text().strip()


def _boto_ec2(info: dict[str, Any]) -> Any:
    import boto3

    return boto3.client("ec2", endpoint_url=info["endpoint_url"], region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _launch(ec2: Any, keys_dir: Path) -> tuple[str, str, Path, str]:
    """RunInstances with a key pair and user-data host keys (as `up` does): (id, address, login key, host key)."""
    login, login_pub = _keypair(keys_dir / "login")
    host, host_pub = _keypair(keys_dir / "host")
    ec2.import_key_pair(KeyName="lb", PublicKeyMaterial=login_pub.encode())
    user_data = "#cloud-config\n" + json.dumps({"ssh_keys": {"ed25519_private": host.read_text(),
                                                             "ed25519_public": host_pub}})
    image = ec2.describe_images()["Images"][0]["ImageId"]
    reply = ec2.run_instances(ImageId=image, InstanceType="t3.micro", MinCount=1, MaxCount=1, KeyName="lb",
                              UserData=user_data,
                              TagSpecifications=[{"ResourceType": "instance",
                                                  "Tags": [{"Key": "nbcloud:name", "Value": "lb"}]}])
    inst = reply["Instances"][0]
    return inst["InstanceId"], inst["PublicIpAddress"], login, host_pub


def _ssh_config(path: Path, address: str, port: int, user: str, login: Path, host_pub: str) -> Path:
    """nbcloud's own entry format (HostKeyAlias + pinned key, StrictHostKeyChecking yes) for alias nb-lb."""
    from nbcloud.ssh.config import SshEntry, render_entry

    known = path / "known_hosts"
    known.write_text(f"nb-lb {host_pub}\n")
    config = path / "ssh_config"
    config.write_text(render_entry(SshEntry(alias="nb-lb", host=address, user=user, identity_file=login,
                                            known_hosts=known, port=port)) + "  BatchMode yes\n")
    return config


def _ssh_until_true(config: Path, sandbox_dir: Path, timeout: float = 90.0) -> float:
    """Generous: on a loaded machine (CI beside other sandboxes: load 10) the instance's sshd came up after 30 s."""
    start = time.monotonic()
    while True:
        result = subprocess.run(["ssh", "-F", str(config), "nb-lb", "true"], capture_output=True, text=True)
        if result.returncode == 0:
            return time.monotonic() - start
        assert "REMOTE HOST IDENTIFICATION" not in result.stderr, result.stderr
        if time.monotonic() - start > timeout:
            raise AssertionError(f"ssh never got in: {result.stderr.strip()}\n{sandbox_logs(sandbox_dir)}")
        time.sleep(0.05)


def _live(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def _wait_gone(pids: list[int], timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while _live(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _live(pids)


# -------------------------------------------------------------------------------------------- forced loopback
@pytest.fixture
def forced_loopback(nbcloud_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from nbcloud.sandbox import client

    monkeypatch.setenv("NBCLOUD_SANDBOX_MODE", "loopback")
    directory = nbcloud_home / "sandbox"
    monkeypatch.setenv("NBCLOUD_SANDBOX_DIR", str(directory))  # the one `get_provider` finds, whatever the runner set
    try:
        yield start_on_a_free_subnet(directory, tuple(LOOPBACK_SUBNETS))
    finally:
        client.reset(directory)


def test_forced_loopback_run_instances_then_ssh(forced_loopback: Any, tmp_path: Path) -> None:
    from nbcloud.providers.registry import get_provider
    from nbcloud.sandbox import client

    info = forced_loopback
    assert info.mode == "loopback" and info.mode_reason == "NBCLOUD_SANDBOX_MODE=loopback"
    status = client.status(info.sandbox_dir)
    assert status["mode"] == "loopback" and status["guard"] is None
    assert status["subnet"].startswith("127.")

    t0 = time.monotonic()
    instance_id, address, login, host_pub = _launch(_boto_ec2(vars(info)), tmp_path)
    assert address.startswith(status["subnet"].rsplit(".", 2)[0] + ".")  # moto reports the loopback address

    provider = get_provider("sandbox", start=False)  # what `up` would see: the login user and port it reports
    found = provider.find("lb")
    assert found is not None and found.host == address
    assert (found.user, found.ssh_port) == (info.login_user, info.ssh_port)
    config = _ssh_config(tmp_path, address, found.ssh_port, found.user, login, host_pub)
    _ssh_until_true(config, info.sandbox_dir)
    print(f"loopback RunInstances -> ssh true: {time.monotonic() - t0:.2f} s")

    # the session carries the instance's environment: its IMDS answers with its own id
    probe = ("import json, os, urllib.request as u; base = os.environ['AWS_EC2_METADATA_SERVICE_ENDPOINT'];"
             "t = u.urlopen(u.Request(base + '/latest/api/token', method='PUT',"
             " headers={'X-aws-ec2-metadata-token-ttl-seconds': '60'})).read().decode();"
             "print(u.urlopen(u.Request(base + '/latest/meta-data/instance-id',"
             " headers={'X-aws-ec2-metadata-token': t})).read().decode())")
    result = subprocess.run(["ssh", "-F", str(config), "nb-lb", f"cloud-init status --wait; python3 -c \"{probe}\""],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert instance_id in result.stdout and "status: done" in result.stdout

    row = client.status(info.sandbox_dir)["instances"][0]
    assert row["state"] == "running" and row["namespace"] is None and row["pids"]

    fault = subprocess.run([sys.executable, "-c", CLI, "sandbox", "fault", instance_id, "link-down"],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert fault.returncode == 2 and "netns mode" in fault.stderr and len(fault.stderr.strip().splitlines()) == 1

    pids = row["pids"]
    client.reset(info.sandbox_dir)
    assert _wait_gone(pids) == [], "reset left instance processes running"
    assert not (info.sandbox_dir / "instances").exists()


# -------------------------------------------------------------------------------------------- truly unprivileged
def _inaccessible_ancestor(path: Path) -> Path | None:
    """The highest directory on the way to ``path`` that other users cannot enter (no o+x), if any."""
    for parent in reversed(path.parents):
        if parent != Path("/") and not os.stat(parent).st_mode & 0o001:
            return parent
    return None


@pytest.fixture
def unprivileged(tmp_path: Path) -> Iterator[Any]:
    """Run the CLI as a throwaway uid: ``run(*args)`` returns the CompletedProcess."""
    if os.geteuid() != 0:
        pytest.skip("already unprivileged: the forced-loopback test covers this run")
    if shutil.which("unshare") is None or shutil.which("setpriv") is None:
        pytest.skip("needs unshare and setpriv (util-linux)")
    base = Path(tempfile.mkdtemp(prefix="nblb-", dir="/tmp"))  # pytest's tmp is 0700 root: not for the user
    os.chmod(base, 0o755)
    home = base / "home"
    home.mkdir()
    os.chown(home, THROWAWAY_UID, THROWAWAY_UID)
    etc = base / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(Path("/etc/passwd").read_text()
                                + f"{THROWAWAY_USER}:x:{THROWAWAY_UID}:{THROWAWAY_UID}::{home}:/bin/bash\n")
    (etc / "group").write_text(Path("/etc/group").read_text() + f"{THROWAWAY_USER}:x:{THROWAWAY_UID}:\n")
    # root's private view: the user database with the throwaway user, and this Python and this checkout made
    # reachable (either may sit below a directory other users cannot enter, such as /root)
    setup = [f"mount --bind {etc / 'passwd'} /etc/passwd", f"mount --bind {etc / 'group'} /etc/group"]
    hidden: dict[Path, list[Path]] = {}
    for needed in (Path(sys.prefix).resolve(), ROOT / "src"):
        ancestor = _inaccessible_ancestor(needed)
        if ancestor is not None:
            hidden.setdefault(ancestor, []).append(needed.relative_to(ancestor))
    for index, (ancestor, inners) in enumerate(hidden.items()):
        orig = base / f"orig{index}"
        orig.mkdir()
        setup += [f"mount --bind {ancestor} {orig}", f"mount -t tmpfs -o mode=0755 tmpfs {ancestor}"]
        for inner in inners:
            setup += [f"mkdir -p {ancestor / inner}", f"mount --bind {orig / inner} {ancestor / inner}"]
    env = {"HOME": str(home), "USER": THROWAWAY_USER, "LOGNAME": THROWAWAY_USER, "LANG": "C.UTF-8",
           "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "PYTHONPATH": str(ROOT / "src"),
           "NBCLOUD_HOME": str(home / "nb"), "NBCLOUD_QUIET": "1"}

    def run(*args: str, extra_env: dict[str, str] | None = None, argv: list[str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The CLI with ``args`` (or any ``argv``) as the throwaway user."""
        drop = ["setpriv", f"--reuid={THROWAWAY_UID}", f"--regid={THROWAWAY_UID}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "env", "-i",
                *[f"{k}={v}" for k, v in {**env, **(extra_env or {})}.items()],
                *(argv or [sys.executable, "-c", CLI, *args])]
        script = "set -e; " + "; ".join(setup) + '; exec "$@"'
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *drop],
                              capture_output=True, text=True, timeout=timeout, cwd="/")

    run.home = home  # type: ignore[attr-defined]

    try:
        yield run
    finally:
        run("sandbox", "reset")
        for pid in _processes_of(THROWAWAY_UID):  # a failed test must not leave the throwaway uid running
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


def _processes_of(uid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def test_unprivileged_user_gets_loopback_mode(unprivileged: Any, tmp_path: Path) -> None:
    started = None
    for subnet in LOOPBACK_SUBNETS:
        started = unprivileged("sandbox", "start", "--json", extra_env={"NBCLOUD_SANDBOX_SUBNET": subnet})
        if started.returncode == 0 or "used by another sandbox" not in started.stderr:
            break
    assert started is not None and started.returncode == 0, started.stderr if started else ""
    status = json.loads(unprivileged("sandbox", "status", "--json").stdout)
    assert status["mode"] == "loopback" and status["mode_reason"] == "not root"
    assert status["login_user"] == THROWAWAY_USER
    if Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text().strip() != "0":
        assert status["ssh_port"] != 22  # an unprivileged sshd cannot bind 22 here

    t0 = time.monotonic()
    _, address, login, host_pub = _launch(_boto_ec2(status), tmp_path)
    config = _ssh_config(tmp_path, address, status["ssh_port"], THROWAWAY_USER, login, host_pub)
    _ssh_until_true(config, Path(status["sandbox_dir"]))
    print(f"unprivileged loopback RunInstances -> ssh true: {time.monotonic() - t0:.2f} s")
    who = subprocess.run(["ssh", "-F", str(config), "nb-lb", "id -u"], capture_output=True, text=True, timeout=30)
    assert who.stdout.strip() == str(THROWAWAY_UID)
    text = unprivileged("sandbox", "status")
    assert "loopback" in text.stdout and "not root" in text.stdout

    assert _processes_of(THROWAWAY_UID), "the daemon and the instance run as the throwaway user"
    reset = unprivileged("sandbox", "reset")
    assert reset.returncode == 0, reset.stderr
    assert _wait_gone(_processes_of(THROWAWAY_UID)) == [], "reset left processes of the throwaway user"


def _give_wheelhouse(home: Path) -> None:
    """The machine's sandbox wheelhouse where the throwaway user's sandbox looks for it (~/.cache/nbcloud).

    Hard links (read-only to the user: the files stay root's) when on one filesystem, else a copy; the user's own
    uv cache is made and warmed by its ``sandbox start``.
    """
    from nbcloud.sandbox.wheelhouse import ensure_wheelhouse

    source = ensure_wheelhouse()
    cache = home / ".cache" / "nbcloud"
    (cache / "wheelhouse").mkdir(parents=True)
    for directory in (home / ".cache", cache):
        os.chown(directory, THROWAWAY_UID, THROWAWAY_UID)
    os.chmod(cache / "wheelhouse", 0o755)
    target = cache / "wheelhouse" / source.name
    if subprocess.run(["cp", "-al", str(source), str(target)], capture_output=True).returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run(["cp", "-a", str(source), str(target)], check=True)


def _instance_logs(home: Path) -> str:
    """The tail of every instance log under the user's sandbox (for a failure message)."""
    text = ""
    for pattern in ("instances/*/init.log", "instances/*/root/var/log/cloud-init-output.log",
                    "instances/*/root/var/log/nbcloud/*.log", "daemon.log"):
        for path in sorted(home.rglob(pattern)):
            text += f"\n== {path.name} ==\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:])
    return text


def _get(url: str, token: str | None = None) -> int:
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"token {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _gateway_without_root(run: Any, home: Path) -> None:
    """Gateway mode on a loopback instance: a local JupyterLab (this user's) whose kernel runs in the instance,
    i.e. with the instance's home under the sandbox as its working directory."""
    from tests.integration.test_gateway_local import _execute, http

    from nbcloud.ops.gateway import LabResult

    enabled = run("gateway", "demo", "--json", timeout=300)
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    notebooks = home / "notebooks"
    notebooks.mkdir()
    os.chown(notebooks, THROWAWAY_UID, THROWAWAY_UID)
    started = run("lab", "demo", str(notebooks), "--no-browser", "--json", timeout=200)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        raw = json.loads(started.stdout)
        lab = LabResult(**{k: v for k, v in raw.items() if k in LabResult.__dataclass_fields__})
        token = lab.url.split("token=", 1)[1]
        status, kernel = http("POST", f"http://127.0.0.1:{lab.local_port}/api/kernels", token, {"name": "python3"})
        assert status == 201 and isinstance(kernel, dict)
        cwd = _execute(lab, kernel["id"], "import os; os.getcwd()")
        assert "/instances/i-" in cwd and cwd.endswith(f"/home/{THROWAWAY_USER}'"), cwd
    finally:
        stopped = run("lab", "demo", "--stop", timeout=60)
        assert stopped.returncode == 0, stopped.stderr


@pytest.mark.timeout(900)
def test_unprivileged_up_connect_down(unprivileged: Any) -> None:
    """The credential-free demo without root: up → Jupyter through the tunnel (token required), ssh, status,
    stop/start, down, reset; nothing of the user's left running."""
    run = unprivileged
    home: Path = run.home
    _give_wheelhouse(home)
    started = None
    for subnet in LOOPBACK_SUBNETS:
        started = run("sandbox", "start", "--json", extra_env={"NBCLOUD_SANDBOX_SUBNET": subnet}, timeout=300)
        if started.returncode == 0 or "used by another sandbox" not in started.stderr:
            break
    assert started is not None and started.returncode == 0, started.stderr if started else ""

    t0 = time.monotonic()
    try:
        up = run("up", "demo", "--provider", "sandbox", "--no-connect", "--json", timeout=300)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"up timed out: {exc.stderr!r}{_instance_logs(home)}") from None
    assert up.returncode == 0, up.stdout + up.stderr + _instance_logs(home)
    print(f"unprivileged loopback up -> Jupyter ready: {time.monotonic() - t0:.1f} s")
    result = json.loads(up.stdout)
    assert result["user"] == THROWAWAY_USER
    port = json.loads(run("sandbox", "status", "--json").stdout)["ssh_port"]
    config_text = "".join(p.read_text() for p in (home / "nb").rglob("ssh_config"))
    assert f"Port {port}\n" in config_text and f"User {THROWAWAY_USER}\n" in config_text

    ssh = run(argv=["ssh", "-o", "BatchMode=yes", "nb-demo", "id -u"])
    assert ssh.returncode == 0 and ssh.stdout.strip() == str(THROWAWAY_UID), ssh.stderr

    def connect() -> str:
        done = run("connect", "demo", "--no-browser", "--json", timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return str(json.loads(done.stdout)["url"])

    url = connect()
    base, token = url.split("/lab?token=")
    assert _get(f"{base}/api/status", token) == 200
    assert _get(f"{base}/api/status") == 403, "Jupyter must want the token"
    # the token file on the instance is 0600 and no process has it on its command line
    mode = run(argv=["ssh", "-o", "BatchMode=yes", "nb-demo",
                     'stat -c %a "$NBCLOUD_ROOT$HOME/.config/nbcloud/token" 2>/dev/null || '
                     'stat -c %a "$NBCLOUD_ROOT/home/$(id -un)/.config/nbcloud/token"'])
    assert mode.stdout.strip().splitlines()[-1] == "600", mode.stdout + mode.stderr
    for pid in _processes_of(THROWAWAY_UID):
        try:
            assert token.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue

    status = run("status", "demo", "--json")
    assert status.returncode == 0 and '"running"' in status.stdout, status.stdout + status.stderr
    # `autostop` writes where this machine's agent reads (the login user here is not ubuntu): the agent's own
    # state, read back through `status`, takes the new limit within a check or two
    assert run("autostop", "demo", "45m", "--json").returncode == 0
    deadline = time.monotonic() + 40
    while "of 2700s" not in (reason := str(json.loads(run("status", "demo", "--json").stdout).get("idle_reason"))):
        assert time.monotonic() < deadline, f"the agent never took the new limit: {reason}"
        time.sleep(2)
    stop = run("stop", "demo", "--json", timeout=120)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    start = run("start", "demo", "--json", timeout=300)
    assert start.returncode == 0, start.stdout + start.stderr
    url = connect()  # a new address after the start: the tunnel follows the instance
    base, token = url.split("/lab?token=")
    assert _get(f"{base}/api/status", token) == 200

    volume = run("up", "other", "--provider", "sandbox", "--no-connect", "--data-volume", "10")
    assert volume.returncode == 2 and len(volume.stderr.strip().splitlines()) == 1, volume.stderr
    orphans = json.loads(run("doctor", "--orphans", "--provider", "sandbox", "--json").stdout)["orphans"]
    assert [o for o in orphans if o["name"] == "other"] == [], f"the refused up left {orphans}"

    _gateway_without_root(run, home)

    down = run("down", "demo", "--yes", "--json", timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    status = json.loads(run("sandbox", "status", "--json").stdout)
    assert status["instances"] == [] or all(row["state"] == "terminated" for row in status["instances"])
    reset = run("sandbox", "reset")
    assert reset.returncode == 0, reset.stderr
    assert _wait_gone(_processes_of(THROWAWAY_UID)) == [], "down + reset left processes of the throwaway user"
