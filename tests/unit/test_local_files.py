"""Local files: private permissions, atomic ssh config rewrites, one Include line, the state store."""

from __future__ import annotations

import multiprocessing
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from nbcloud.config import paths
from nbcloud.ssh import config as ssh_config
from nbcloud.ssh.keys import load_or_create_host_key, load_or_create_login_key
from nbcloud.state import Record, Store, open_store


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_are_private_and_stable(nbcloud_home: Path) -> None:
    p = paths()
    pair, path = load_or_create_login_key(p.keys_dir, "demo")
    assert mode(path) == 0o600 and mode(p.keys_dir) == 0o700
    assert pair.public_openssh.startswith("ssh-ed25519 ")
    again, _ = load_or_create_login_key(p.keys_dir, "demo")
    assert again == pair
    host = load_or_create_host_key(p.keys_dir, "demo")
    assert host.public_blob.count(" ") == 1 and host != pair


def test_ssh_entry_rewrite_and_include(nbcloud_home: Path, tmp_path: Path) -> None:
    p = paths()
    user_config = p.user_ssh_config
    user_config.parent.mkdir(parents=True)
    user_config.write_text("Host old\n  User me\n")
    entry = ssh_config.SshEntry("nb-demo", "10.0.0.5", "ubuntu", p.keys_dir / "demo", p.known_hosts)
    ssh_config.write_entry(p, entry)
    ssh_config.write_entry(p, ssh_config.SshEntry("nb-other", "10.0.0.6", "ubuntu", p.keys_dir / "o", p.known_hosts))
    assert ssh_config.ensure_include(p) is True
    assert ssh_config.ensure_include(p) is False  # added once
    text = user_config.read_text()
    assert text.splitlines()[1] == f'Include "{p.ssh_config}"' and "Host old" in text
    assert user_config.with_name("config.nbcloud-backup").read_text() == "Host old\n  User me\n"

    ssh_config.write_entry(p, ssh_config.SshEntry("nb-demo", "10.0.0.9", "ubuntu", p.keys_dir / "demo", p.known_hosts))
    body = p.ssh_config.read_text()
    assert "HostName 10.0.0.9" in body and "HostName 10.0.0.5" not in body and "HostName 10.0.0.6" in body
    assert "StrictHostKeyChecking yes" in body and "HostKeyAlias nb-demo" in body
    assert mode(p.ssh_config) == 0o600
    ssh_config.remove_entry(p, "nb-demo")
    assert "nb-demo" not in p.ssh_config.read_text() and "nb-other" in p.ssh_config.read_text()


def test_pinning_replaces_only_that_alias(nbcloud_home: Path) -> None:
    p = paths()
    ssh_config.pin_host_key(p, "nb-a", "ssh-ed25519 AAAA1")
    ssh_config.pin_host_key(p, "nb-b", "ssh-ed25519 BBBB1")
    ssh_config.pin_host_key(p, "nb-a", "ssh-ed25519 AAAA2")
    assert p.known_hosts.read_text().splitlines() == ["nb-b ssh-ed25519 BBBB1", "nb-a ssh-ed25519 AAAA2"]
    ssh_config.unpin_host_key(p, "nb-b")
    assert p.known_hosts.read_text() == "nb-a ssh-ed25519 AAAA2\n"


def test_store_is_private_wal_and_records_transitions(nbcloud_home: Path) -> None:
    store = open_store()
    assert mode(paths().state_db) == 0o600
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.put(Record(name="demo", provider="sandbox", region="us-east-1", instance_id="i-1", local_port=8888))
    store.update("demo", state="running", spec={"name": "demo"})
    assert store.get("demo").state == "running" and store.get("demo").spec == {"name": "demo"}
    assert store.ports_in_use() == {8888}
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for offset, state in [(0, "running"), (10, "running"), (60, "stopped"), (120, "running")]:
        store.record_state("demo", "i-1", state, t0 + timedelta(seconds=offset))
    assert [s for _, s, _ in store.events("demo")] == ["running", "stopped", "running"]
    store.delete("demo")
    assert store.get("demo") is None


def test_private_files_never_change_a_shared_parent(tmp_path: Path) -> None:
    """A user ssh config in a shared directory (NBCLOUD_USER_SSH_CONFIG=/tmp/x once made /tmp 0700)."""
    from nbcloud.config import write_private

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    write_private(shared / "config", "Host x\n")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert stat.S_IMODE((shared / "config").stat().st_mode) == 0o600
    write_private(tmp_path / "made" / "key", "secret")
    assert stat.S_IMODE((tmp_path / "made").stat().st_mode) == 0o700


def _open_at_once(db_path: str, barrier: Any, errors: Any) -> None:
    barrier.wait()
    try:
        Store(Path(db_path)).close()
    except Exception as exc:  # the parent reports what each child hit
        errors.put(repr(exc))


def test_first_ever_stores_opened_at_once_all_succeed(tmp_path: Path) -> None:
    """Two `nbcloud up` on a fresh machine open the store in the same instant (seen in CI as 'database is locked';
    without the setup lock about one fresh store in six fails here)."""
    ctx = multiprocessing.get_context("fork")
    failures: list[str] = []
    for attempt in range(100):
        db_path = tmp_path / f"try{attempt}" / "state.db"
        barrier, errors = ctx.Barrier(4), ctx.Queue()
        children = [ctx.Process(target=_open_at_once, args=(str(db_path), barrier, errors)) for _ in range(4)]
        for child in children:
            child.start()
        for child in children:
            child.join(30)
        while not errors.empty():
            failures.append(errors.get())
    assert failures == [], f"{len(failures)} of 400 opens failed: {failures[0]}"


def test_local_port_base(monkeypatch: Any) -> None:
    from nbcloud.config import local_port_base

    monkeypatch.delenv("NBCLOUD_LOCAL_PORT", raising=False)
    assert local_port_base() == 8888
    monkeypatch.setenv("NBCLOUD_LOCAL_PORT", "23000")
    assert local_port_base() == 23000
    for junk in ("x", "80", "70000"):  # not a number, privileged, past the top: the default
        monkeypatch.setenv("NBCLOUD_LOCAL_PORT", junk)
        assert local_port_base() == 8888
