"""Public mode's certificate after an address change: the pure parts and the decision, with ssh replaced by a fake."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nbcloud.errors import RemoteError
from nbcloud.remote.secrets import (
    cert_ip_addresses,
    install_secrets_script,
    install_tls_script,
    make_tls_cert,
    restart_jupyter_script,
)


def test_cert_ip_addresses_names_the_address_it_was_made_for() -> None:
    cert_pem, _, _ = make_tls_cert("nb-demo", "203.0.113.7")
    assert cert_ip_addresses(cert_pem) == ["203.0.113.7"]


def test_install_tls_script_replaces_only_the_pair(tmp_path: Path) -> None:
    target = tmp_path / "secrets"
    script, stdin = install_secrets_script("the-token", password_hash="argon2:x", cert_pem="old-cert",
                                           key_pem="old-key", secrets_dir=str(target))
    assert subprocess.run(["bash", "-c", script], input=stdin, capture_output=True).returncode == 0
    cert_pem, key_pem, _ = make_tls_cert("nb-demo", "203.0.113.8")
    script, stdin = install_tls_script(cert_pem, key_pem, secrets_dir=str(target))
    key_body = key_pem.splitlines()[1]
    assert key_body not in script and key_body.encode() not in stdin  # base64 on stdin only
    done = subprocess.run(["bash", "-c", script], input=stdin, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert (target / "jupyter.key").read_text() == key_pem and (target / "jupyter.crt").read_text() == cert_pem
    assert (target / "token").read_text() == "the-token" and (target / "password.hash").read_text() == "argon2:x"
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in target.iterdir())


def test_restart_script_takes_only_a_fingerprint() -> None:
    _, _, fingerprint = make_tls_cert("nb-demo", "203.0.113.7")
    script = restart_jupyter_script(fingerprint, 8888, timeout=30)
    assert fingerprint.replace(":", "").lower() in script and "8888" in script
    assert "nbcloud-jupyter.service" in script and "bootstrap.done" in script
    with pytest.raises(ValueError):
        restart_jupyter_script("00'; rm -rf ~; '", 8888)


# -- the decision in nbcloud.ops.public, on a private NBCLOUD_HOME -----------------------------------------------


@pytest.fixture
def ctx(nbcloud_home: Path) -> Any:
    from nbcloud.ops import Context

    return Context.create()


def _record(ctx: Any, name: str, public: bool) -> None:
    from nbcloud.state import Record

    ctx.store.put(Record(name=name, provider="sandbox", region="us-east-1", instance_id="i-1", state="running",
                         host="10.9.0.2", spec={"name": name, "public": public}))


class FakeSsh:
    def __init__(self, fail_on: int | None = None, restart_code: int = 0) -> None:
        self.calls: list[tuple[str, bytes | None]] = []
        self.fail_on = fail_on
        self.restart_code = restart_code

    def __call__(self, config: Path, alias: str, command: str, *, input: bytes | None = None, **_: Any) -> Any:
        from nbcloud.ssh.session import SshResult

        self.calls.append((command, input))
        if self.fail_on == len(self.calls):
            raise RemoteError("ssh nb-x: command failed (255)")
        code = self.restart_code if len(self.calls) == 2 else 0
        return SshResult(code, "", "nbcloud: Jupyter did not serve the new certificate" if code else "")


def test_reissue_only_in_public_mode_and_only_when_the_address_moved(ctx: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from nbcloud.ops import public
    from nbcloud.ssh import session

    fake = FakeSsh()
    monkeypatch.setattr(session, "run", fake)
    _record(ctx, "plain", public=False)
    assert public.reissue_tls_if_moved(ctx, "plain", "10.9.0.3") is False and fake.calls == []

    _record(ctx, "pub", public=True)
    public.prepare_tls(ctx, "pub", "10.9.0.2")
    first_pin = public.pinned_fingerprint(ctx, "pub")
    assert public.reissue_tls_if_moved(ctx, "pub", "10.9.0.2") is False and fake.calls == []  # same address

    assert public.reissue_tls_if_moved(ctx, "pub", "10.9.0.3") is True
    (install, key_stdin), (restart, restart_stdin) = fake.calls
    pin = public.pinned_fingerprint(ctx, "pub")
    assert pin and pin != first_pin
    assert key_stdin and b"jupyter.key " in key_stdin and restart_stdin is None
    assert pin.replace(":", "").lower() in restart and "PRIVATE KEY" not in install + restart
    assert cert_ip_addresses(public.cert_path(ctx, "pub").read_text()) == ["10.9.0.3"]


def test_failed_install_keeps_the_old_pin_so_the_next_start_retries(ctx: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from nbcloud.ops import public
    from nbcloud.ssh import session

    _record(ctx, "pub", public=True)
    public.prepare_tls(ctx, "pub", "10.9.0.2")
    first_pin = public.pinned_fingerprint(ctx, "pub")
    monkeypatch.setattr(session, "run", FakeSsh(fail_on=1))
    with pytest.raises(RemoteError):
        public.reissue_tls_if_moved(ctx, "pub", "10.9.0.3")
    assert public.pinned_fingerprint(ctx, "pub") == first_pin

    # Installed but Jupyter did not come back on it: the pin follows the files, the error says what failed.
    monkeypatch.setattr(session, "run", FakeSsh(restart_code=4))
    with pytest.raises(RemoteError, match="new certificate"):
        public.reissue_tls_if_moved(ctx, "pub", "10.9.0.3")
    assert public.pinned_fingerprint(ctx, "pub") != first_pin


def test_prepare_tls_keeps_the_password_hash_for_a_relaunch(ctx: Any) -> None:
    from nbcloud.ops import public

    _record(ctx, "pub", public=True)
    public.prepare_tls(ctx, "pub", "10.9.0.2")
    assert public.stored_password_hash(ctx.store.get("pub")) is None
    public.prepare_tls(ctx, "pub", "10.9.0.2", "argon2:$argon2id$v=19$m=10240,t=10,p=8$abc$def")
    record = ctx.store.get("pub")
    assert public.stored_password_hash(record) == "argon2:$argon2id$v=19$m=10240,t=10,p=8$abc$def"
    assert record.spec["tls_fingerprint"] == public.pinned_fingerprint(ctx, "pub")
