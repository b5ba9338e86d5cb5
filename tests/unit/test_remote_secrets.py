"""Secrets made on the client: token, password hash, TLS certificate, and the scripts that install them."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import ssl
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from nbcloud.errors import UsageError
from nbcloud.remote.secrets import (
    agent_settings_json,
    autostop_update_script,
    hash_password,
    install_secrets_script,
    make_tls_cert,
    new_token,
)


def test_new_token_is_long_and_fresh() -> None:
    tokens = {new_token() for _ in range(20)}
    assert len(tokens) == 20 and all(len(t) >= 40 for t in tokens)


def test_password_hash_verifies_with_jupyter() -> None:
    security = pytest.importorskip("jupyter_server.auth.security")
    hashed = hash_password("correct horse")
    assert hashed.startswith("argon2:")
    assert security.passwd_check(hashed, "correct horse")
    assert not security.passwd_check(hashed, "wrong horse")
    with pytest.raises(UsageError):
        hash_password("")


def test_password_hash_needs_no_jupyter_on_this_machine() -> None:
    """`up --public` on a laptop without nbcloud[lab]: the hash is made anyway, and Jupyter accepts it."""
    import subprocess
    import sys

    code = ("import sys\nfor m in ('jupyter_server', 'notebook', 'IPython'):\n    sys.modules[m] = None\n"
            "from nbcloud.remote.secrets import hash_password\nprint(hash_password('correct horse'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    hashed = done.stdout.strip()
    assert hashed.startswith("argon2:$argon2id$")
    from jupyter_server.auth.security import passwd_check

    assert passwd_check(hashed, "correct horse") and not passwd_check(hashed, "wrong horse")


def test_tls_cert_has_the_ip_and_loads(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    cert_pem, key_pem, fingerprint = make_tls_cert("nb-demo", "203.0.113.7")
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("203.0.113.7") in san.get_values_for_type(x509.IPAddress)
    assert "nb-demo" in san.get_values_for_type(x509.DNSName)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert fingerprint == ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))
    (tmp_path / "c.pem").write_text(cert_pem)
    (tmp_path / "k.pem").write_text(key_pem)
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")


def test_install_script_writes_private_files_from_stdin_only(tmp_path: Path) -> None:
    token = new_token()
    target = tmp_path / "home" / ".config" / "nbcloud"
    script, stdin = install_secrets_script(
        token,
        password_hash="argon2:$argon2id$v=19$m=10240,t=10,p=8$abc$def",
        cert_pem="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        key_pem="-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n",
        gateway_token="gw-" + token,
        agent_settings=agent_settings_json(900, 5.0, 0.5),
        secrets_dir=str(target),
    )
    assert token not in script and token.encode() not in stdin  # base64 on stdin, nothing on the command line
    # run it the way ssh does: the script as bash's argument, the secrets on stdin
    result = subprocess.run(["bash", "-c", script], input=stdin, capture_output=True)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    files = {p.name: p for p in target.iterdir()}
    assert set(files) == {"token", "password.hash", "jupyter.crt", "jupyter.key", "gateway-token", "agent.json"}
    for path in files.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert files["token"].read_text() == token
    assert files["gateway-token"].read_text() == "gw-" + token
    assert files["password.hash"].read_text().startswith("argon2:$argon2id$")
    assert json.loads(files["agent.json"].read_text())["idle_stop_seconds"] == 900
    # idempotent: a second run replaces the files
    script2, stdin2 = install_secrets_script("second", secrets_dir=str(target))
    assert subprocess.run(["bash", "-c", script2], input=stdin2, capture_output=True).returncode == 0
    assert files["token"].read_text() == "second"


def test_install_script_refuses_path_names(tmp_path: Path) -> None:
    script, _ = install_secrets_script("t", secrets_dir=str(tmp_path / "s"))
    result = subprocess.run(["bash", "-c", script], input=b"../evil dGVzdA==\n", capture_output=True)
    assert result.returncode != 0 and not (tmp_path / "evil").exists()


def test_autostop_update_script(tmp_path: Path) -> None:
    home = tmp_path / "home" / "ubuntu"
    settings = home / ".config" / "nbcloud" / "agent.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(agent_settings_json(3600, 10.0, 0.1))
    command = autostop_update_script(1800).replace("/home/ubuntu", str(home))
    assert "\n" not in command
    subprocess.run(["bash", "-c", command], check=True, capture_output=True)
    data = json.loads(settings.read_text())
    assert data == {"idle_stop_seconds": 1800, "max_cost_usd": 10.0, "hourly_usd": 0.1}
    subprocess.run(["bash", "-c", autostop_update_script(None).replace("/home/ubuntu", str(home))], check=True,
                   capture_output=True)
    assert json.loads(settings.read_text())["idle_stop_seconds"] is None
    assert oct(os.stat(settings).st_mode & 0o777) == "0o600"
    with pytest.raises(UsageError):
        autostop_update_script(10)


def test_install_script_agent_settings_from_fields() -> None:
    import base64

    _, stdin = install_secrets_script("t", idle_stop_seconds=None, max_cost_usd=3.0, hourly_usd=0.5)
    lines = dict(line.split(" ", 1) for line in stdin.decode().splitlines())
    assert json.loads(base64.b64decode(lines["agent.json"])) == {
        "idle_stop_seconds": None, "max_cost_usd": 3.0, "hourly_usd": 0.5}
    _, stdin = install_secrets_script("t")
    assert b"agent.json" not in stdin  # not passed: the instance's current settings stay


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_install_script_waits_while_the_bootstrap_hands_the_directory_over() -> None:
    """The first ssh session can run while the bootstrap (root) has made ~/.config/nbcloud but not chowned it."""
    user = 64124
    base = Path(tempfile.mkdtemp(prefix="nbsecrets-", dir="/tmp"))  # pytest's tmp is 0700 root: not for the user
    os.chmod(base, 0o755)
    home = base / "home"
    target = home / ".config" / "nbcloud"
    target.mkdir(parents=True)  # made by "root", not yet handed over
    for path in (home, home / ".config"):
        os.chown(path, user, user)
    script, stdin = install_secrets_script("tok", secrets_dir=str(target))
    try:
        proc = subprocess.Popen(["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "bash", "-c",
                                 script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(1.0)
        os.chown(target, user, user)  # the bootstrap's `owned`
        _out, err = proc.communicate(stdin, timeout=30)
        assert proc.returncode == 0, err
        assert (target / "token").read_text() == "tok"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_hold_script_writes_and_removes_the_file_the_agent_reads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import subprocess

    from nbcloud.remote.agent.nbcloud_agent import read_hold
    from nbcloud.remote.secrets import hold_script

    env = dict(os.environ, NBCLOUD_ROOT=str(tmp_path))
    hold_file = tmp_path / "home/ubuntu/.config/nbcloud/hold"
    reason = "it's a run; $(touch pwned)"  # a word on argv, never code or shell
    assert subprocess.run(["sh", "-c", hold_script(reason)], env=env, cwd=tmp_path).returncode == 0
    assert read_hold(str(hold_file)) == reason and not (tmp_path / "pwned").exists()
    released = subprocess.run(["sh", "-c", hold_script(None)], env=env, capture_output=True, text=True)
    assert released.stdout.strip() == "True" and read_hold(str(hold_file)) is None
    again = subprocess.run(["sh", "-c", hold_script(None)], env=env, capture_output=True, text=True)
    assert again.stdout.strip() == "False"
