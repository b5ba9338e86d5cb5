"""The local cache: a small SQLite database in the user's data directory.

Cloud tags are the truth; this store remembers what the cloud cannot tell us cheaply (which provider and
region an instance lives in, its remembered local port, its spec) and the state transitions nbcloud saw
(the running periods that cost is computed from). WAL mode so a tunnel supervisor and a CLI call can use it
at once; the file is 0600 in a 0700 directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .config import Paths, ensure_private_dir, paths

__all__ = ["LaunchIntent", "Record", "Store", "open_store", "read_names"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    name TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    region TEXT NOT NULL,
    profile TEXT,
    instance_id TEXT,
    launch_id TEXT,
    state TEXT,
    host TEXT,
    user TEXT NOT NULL DEFAULT 'ubuntu',
    instance_type TEXT,
    lifecycle TEXT NOT NULL DEFAULT 'on-demand',
    local_port INTEGER,
    gateway_local_port INTEGER,
    spec TEXT NOT NULL DEFAULT '{}',
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    name TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    at REAL NOT NULL,
    state TEXT NOT NULL,
    hourly REAL
);
CREATE INDEX IF NOT EXISTS events_by_name ON events (name, at);
CREATE TABLE IF NOT EXISTS launches (
    launch_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    provider TEXT NOT NULL,
    region TEXT NOT NULL,
    profile TEXT,
    started_at REAL NOT NULL,
    run_at REAL,
    instance_id TEXT,
    outcome TEXT NOT NULL DEFAULT 'pending'
);
CREATE INDEX IF NOT EXISTS launches_by_name ON launches (name, outcome);
"""


@dataclass(frozen=True)
class Record:
    name: str
    provider: str
    region: str
    profile: str | None = None
    instance_id: str | None = None
    launch_id: str | None = None
    state: str | None = None
    host: str | None = None
    user: str = "ubuntu"
    instance_type: str | None = None
    lifecycle: str = "on-demand"
    local_port: int | None = None
    gateway_local_port: int | None = None
    spec: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Record:
        data = dict(row)
        data.pop("updated_at", None)
        data["spec"] = json.loads(data.get("spec") or "{}")
        return cls(**data)


@dataclass(frozen=True)
class LaunchIntent:
    """A launch written down before its first cloud call: what the next command looks for if this one dies.

    ``outcome``: pending (under way, or interrupted when no process holds the name's lock), done (the record owns
    the instance), kept (failed, left for debugging with its record), rolled-back. ``run_at``: when RunInstances was
    sent (None: not yet, so no instance can exist).
    """

    launch_id: str
    name: str
    provider: str
    region: str
    profile: str | None = None
    started_at: float = 0.0
    run_at: float | None = None
    instance_id: str | None = None
    outcome: str = "pending"


#: how long a finished launch's row is kept: an instance that shows up later with its launch id is an orphan
LAUNCH_LOG_DAYS = 7


@contextmanager
def _setup_lock(db_path: Path) -> Iterator[None]:
    fd = os.open(f"{db_path}.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Store:
    def __init__(self, db_path: Path) -> None:
        ensure_private_dir(db_path.parent)
        # Setting up the schema (journal mode, tables, migration) is serialized across processes: SQLite answers
        # a concurrent `PRAGMA journal_mode=WAL` with SQLITE_BUSY at once, without its busy handler, so two
        # first-ever nbcloud calls (two `up` in parallel) would otherwise fail with "database is locked".
        with _setup_lock(db_path):
            if not db_path.exists():
                os.close(os.open(db_path, os.O_CREAT | os.O_WRONLY, 0o600))
            self._db = sqlite3.connect(db_path, timeout=10, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._migrate()
            for suffix in ("", "-wal", "-shm"):
                side = Path(f"{db_path}{suffix}")
                if side.exists():
                    os.chmod(side, 0o600)

    def _migrate(self) -> None:
        """Stores made before prices were recorded per period lack ``events.hourly``: add it (NULL = unknown, the
        price table's figure applies, as it did before)."""
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(events)")}
        if "hourly" not in columns:
            try:
                self._db.execute("ALTER TABLE events ADD COLUMN hourly REAL")
            except sqlite3.OperationalError as exc:  # another process added it in between
                if "duplicate column" not in str(exc):
                    raise

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def get(self, name: str) -> Record | None:
        row = self._db.execute("SELECT * FROM instances WHERE name = ?", (name,)).fetchone()
        return Record.from_row(row) if row else None

    def all(self) -> list[Record]:
        return [Record.from_row(r) for r in self._db.execute("SELECT * FROM instances ORDER BY name")]

    def put(self, record: Record) -> None:
        data = record.__dict__ | {"spec": json.dumps(record.spec or {}, sort_keys=True), "updated_at": time.time()}
        columns = ", ".join(data)
        marks = ", ".join("?" for _ in data)
        self._db.execute(f"INSERT OR REPLACE INTO instances ({columns}) VALUES ({marks})", tuple(data.values()))

    def update(self, name: str, **fields: Any) -> None:
        if not fields:
            return
        if "spec" in fields:
            fields["spec"] = json.dumps(fields["spec"] or {}, sort_keys=True)
        assignments = ", ".join(f"{k} = ?" for k in fields)
        self._db.execute(
            f"UPDATE instances SET {assignments}, updated_at = ? WHERE name = ?",
            (*fields.values(), time.time(), name),
        )

    def delete(self, name: str) -> None:
        self._db.execute("DELETE FROM instances WHERE name = ?", (name,))

    # launches: the intent is made durable (fsync'd) before the first cloud call, so a kill or a power loss
    # right after the call still leaves the next command a launch id to look for
    @contextmanager
    def _durable(self) -> Iterator[None]:
        self._db.execute("PRAGMA synchronous=FULL")
        try:
            yield
        finally:
            self._db.execute("PRAGMA synchronous=NORMAL")

    def begin_launch(self, intent: LaunchIntent) -> None:
        with self._durable():
            self._db.execute(
                "INSERT OR REPLACE INTO launches (launch_id, name, provider, region, profile, started_at, run_at, "
                "instance_id, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (intent.launch_id, intent.name, intent.provider, intent.region, intent.profile,
                 intent.started_at or time.time(), intent.run_at, intent.instance_id, intent.outcome))

    def mark_launch(self, launch_id: str, **fields: Any) -> None:
        """Update a launch (``run_at``, ``instance_id``, ``outcome``), durably."""
        assignments = ", ".join(f"{k} = ?" for k in fields)
        with self._durable():
            self._db.execute(f"UPDATE launches SET {assignments} WHERE launch_id = ?", (*fields.values(), launch_id))

    def launch(self, launch_id: str) -> LaunchIntent | None:
        row = self._db.execute("SELECT * FROM launches WHERE launch_id = ?", (launch_id,)).fetchone()
        return LaunchIntent(**dict(row)) if row else None

    def launches(self, name: str | None = None, outcomes: tuple[str, ...] = ("pending",)) -> list[LaunchIntent]:
        marks = ", ".join("?" for _ in outcomes)
        query = f"SELECT * FROM launches WHERE outcome IN ({marks})"
        args: tuple[Any, ...] = outcomes
        if name is not None:
            query += " AND name = ?"
            args = (*outcomes, name)
        return [LaunchIntent(**dict(r)) for r in self._db.execute(query + " ORDER BY started_at", args)]

    def prune_launches(self, now: float | None = None) -> None:
        """Forget finished launches older than LAUNCH_LOG_DAYS (pending ones stay until resolved)."""
        cutoff = (now or time.time()) - LAUNCH_LOG_DAYS * 86400
        self._db.execute("DELETE FROM launches WHERE outcome != 'pending' AND started_at < ?", (cutoff,))

    def ports_in_use(self) -> set[int]:
        rows = self._db.execute("SELECT local_port, gateway_local_port FROM instances").fetchall()
        return {p for row in rows for p in row if p}

    def last_state(self, name: str, instance_id: str) -> str | None:
        """The latest state recorded for this instance (price rows are not states)."""
        row = self._db.execute(
            "SELECT state FROM events WHERE name = ? AND instance_id = ? AND state != 'price' ORDER BY at DESC LIMIT 1",
            (name, instance_id),
        ).fetchone()
        return row["state"] if row else None

    def last_event_at(self, name: str, instance_id: str) -> datetime | None:
        """When the latest event of any kind was recorded for this instance (a floor for back-dated events)."""
        row = self._db.execute("SELECT MAX(at) AS at FROM events WHERE name = ? AND instance_id = ?",
                               (name, instance_id)).fetchone()
        return datetime.fromtimestamp(row["at"], UTC) if row and row["at"] is not None else None

    def record_state(self, name: str, instance_id: str, state: str, at: datetime | None = None,
                     hourly: float | None = None) -> bool:
        """Remember a state transition (only when it changes): the running periods that cost is made of.

        ``hourly``: for ``running``, the price this period bills at (spot: the price paid at this start). ``at``
        may lie in the past: a stop the agent made is recorded at the cloud's own stop time. True when recorded.
        """
        when = (at or datetime.now(UTC)).timestamp()
        if self.last_state(name, instance_id) == state:
            return False
        self._db.execute("INSERT INTO events (name, instance_id, at, state, hourly) VALUES (?, ?, ?, ?, ?)",
                         (name, instance_id, when, state, hourly))
        return True

    def record_price(self, name: str, instance_id: str, hourly: float, at: datetime | None = None) -> bool:
        """Remember that a running instance's price changed (a spot price moved); only when it differs from the
        price in force. True when recorded."""
        row = self._db.execute(
            "SELECT state, hourly FROM events WHERE name = ? AND instance_id = ? AND (state IN ('running', 'price')) "
            "ORDER BY at DESC, rowid DESC LIMIT 1", (name, instance_id),
        ).fetchone()
        if row is not None and row["hourly"] is not None and abs(row["hourly"] - hourly) < 1e-9:
            return False
        self._db.execute("INSERT INTO events (name, instance_id, at, state, hourly) VALUES (?, ?, ?, 'price', ?)",
                         (name, instance_id, (at or datetime.now(UTC)).timestamp(), hourly))
        return True

    def events(self, name: str) -> list[tuple[datetime, str, str]]:
        """``(at, state, instance_id)`` state transitions, oldest first (price rows left out)."""
        rows = self._db.execute(
            "SELECT at, state, instance_id FROM events WHERE name = ? AND state != 'price' ORDER BY at", (name,))
        return [(datetime.fromtimestamp(r["at"], UTC), r["state"], r["instance_id"]) for r in rows]

    def priced_events(self, name: str) -> list[tuple[datetime, str, float | None]]:
        """``(at, state, hourly)`` for cost: transitions with the price recorded at each start, and price changes."""
        rows = self._db.execute("SELECT at, state, hourly FROM events WHERE name = ? ORDER BY at, rowid", (name,))
        return [(datetime.fromtimestamp(r["at"], UTC), r["state"], r["hourly"]) for r in rows]


def read_names(db_path: Path) -> list[str]:
    """The instance names in the store, read-only (shell completion: never creates or migrates the store)."""
    if not db_path.exists():
        return []
    try:
        db = sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True, timeout=2)
        try:
            return [row[0] for row in db.execute("SELECT name FROM instances ORDER BY name")]
        finally:
            db.close()
    except sqlite3.Error:
        return []


def open_store(p: Paths | None = None) -> Store:
    return Store((p or paths()).state_db)
