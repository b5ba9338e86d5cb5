"""A tiny systemd for one sandbox instance: units in /etc/systemd/system, run by the instance's init.

Runs inside the instance's namespaces (the init process's mount namespace sees the instance's /etc). A unit's
processes run as its ``User=``/``Group=`` with the user's groups, its environment, in a new session.

In loopback mode (no mount namespace, no root) the manager is given the instance's root directory: unit files,
logs and working directories are read under it, and every unit runs as the current user whatever ``User=`` says.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .units import Unit, boot_order, parse_env_file, parse_unit

__all__ = ["ServiceManager"]

UNIT_DIR = Path("/etc/systemd/system")
WANTS_DIR = UNIT_DIR / "multi-user.target.wants"
JOURNAL_DIR = Path("/var/log/sandbox-journal")


@dataclass
class _Service:
    name: str
    state: str = "inactive"  # inactive | activating | active | deactivating | failed
    proc: subprocess.Popen[bytes] | None = None
    wanted: bool = False  # the manager wants it running (start/restart), cleared by stop
    generation: int = 0
    exit_status: int | None = None
    started_at: float | None = None
    log: list[str] = field(default_factory=list)


def _normalize(name: str) -> str:
    return name if "." in name else f"{name}.service"


class ServiceManager:
    def __init__(self, base_env: dict[str, str], root: Path = Path("/"), switch_user: bool = True) -> None:
        self.base_env = base_env
        self.root = root
        self.switch_user = switch_user
        self.unit_dir = self.path(UNIT_DIR)
        self.wants_dir = self.path(WANTS_DIR)
        self._lock = threading.RLock()
        self._services: dict[str, _Service] = {}

    def path(self, absolute: str | Path) -> Path:
        """An instance path as this process sees it (unchanged unless the instance's root is a directory).

        A path already under that directory stays as it is: a loopback bootstrap writes units that name it.
        """
        path = Path(absolute)
        if self.root != Path("/") and path.is_relative_to(self.root):
            return path
        return self.root / str(absolute).lstrip("/")

    # unit files --------------------------------------------------------------------------------------------
    def load(self, name: str) -> Unit:
        name = _normalize(name)
        path = self.unit_dir / name
        if not path.is_file():
            raise KeyError(f"Unit {name} not found.")
        return parse_unit(name, path.read_text())

    def enabled_units(self) -> dict[str, Unit]:
        units: dict[str, Unit] = {}
        if self.wants_dir.is_dir():
            for link in sorted(self.wants_dir.iterdir()):
                if link.name.endswith(".service"):
                    try:
                        units[link.name] = self.load(link.name)
                    except (KeyError, ValueError):
                        continue
        return units

    def is_enabled(self, name: str) -> bool:
        return (self.wants_dir / _normalize(name)).exists() or (self.wants_dir / _normalize(name)).is_symlink()

    def enable(self, name: str) -> None:
        name = _normalize(name)
        self.load(name)
        self.wants_dir.mkdir(parents=True, exist_ok=True)
        link = self.wants_dir / name
        if not link.is_symlink():
            link.symlink_to(self.unit_dir / name)

    def disable(self, name: str) -> None:
        link = self.wants_dir / _normalize(name)
        if link.is_symlink() or link.exists():
            link.unlink()

    # running -----------------------------------------------------------------------------------------------
    def _svc(self, name: str) -> _Service:
        return self._services.setdefault(name, _Service(name))

    def state(self, name: str) -> str:
        with self._lock:
            svc = self._services.get(_normalize(name))
            return svc.state if svc else "inactive"

    def _env(self, unit: Unit, user: pwd.struct_passwd) -> dict[str, str]:
        env = dict(self.base_env)
        env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name, SHELL=user.pw_shell or "/bin/sh")
        env["INVOCATION_ID"] = os.urandom(16).hex()
        for spec in unit.environment_files:
            optional = spec.startswith("-")
            path = self.path(spec.lstrip("-"))
            try:
                env.update(parse_env_file(path.read_text()))
            except OSError:
                if not optional:
                    raise
        env.update(unit.environment)
        return env

    def _stream(self, spec: str, unit: Unit, fallback: IO[bytes] | None) -> Any:
        if spec.startswith(("append:", "file:", "truncate:")):
            kind, _, name = spec.partition(":")
            path = self.path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            return open(path, "ab" if kind == "append" else "wb")
        if spec == "null":
            return subprocess.DEVNULL
        if spec == "inherit" and fallback is not None:
            return fallback
        journal = self.path(JOURNAL_DIR)
        journal.mkdir(parents=True, exist_ok=True)
        return open(journal / f"{unit.name}.log", "ab")

    def _spawn(self, unit: Unit, argv: list[str]) -> subprocess.Popen[bytes]:
        if not self.switch_user:  # loopback: we cannot become anyone else; the unit's directories are ours
            return self._spawn_as_self(unit, argv)
        user = pwd.getpwnam(unit.user) if unit.user else pwd.getpwuid(0)
        gid = grp.getgrnam(unit.group).gr_gid if unit.group else user.pw_gid
        groups = os.getgrouplist(user.pw_name, gid)
        out = self._stream(unit.stdout, unit, None)
        err = self._stream(unit.stderr, unit, out if out is not subprocess.DEVNULL else None)
        try:
            return subprocess.Popen(
                argv, cwd=unit.working_directory or (user.pw_dir if unit.user else "/"),
                env=self._env(unit, user), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                user=user.pw_uid, group=gid, extra_groups=groups, start_new_session=True, close_fds=True,
            )
        finally:
            for stream in {id(out): out, id(err): err}.values():
                if hasattr(stream, "close"):
                    stream.close()

    def _spawn_as_self(self, unit: Unit, argv: list[str]) -> subprocess.Popen[bytes]:
        user = pwd.getpwuid(os.getuid())
        home = self.path(f"/home/{unit.user}") if unit.user else self.path("/root")
        cwd = self.path(unit.working_directory) if unit.working_directory else home
        env = {**self._env(unit, user), "HOME": str(home)}
        out = self._stream(unit.stdout, unit, None)
        err = self._stream(unit.stderr, unit, out if out is not subprocess.DEVNULL else None)
        try:
            return subprocess.Popen(argv, cwd=cwd if cwd.is_dir() else self.root, env=env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
                                    close_fds=True)
        finally:
            for stream in {id(out): out, id(err): err}.values():
                if hasattr(stream, "close"):
                    stream.close()

    def start(self, name: str) -> None:
        name = _normalize(name)
        unit = self.load(name)
        with self._lock:
            svc = self._svc(name)
            if svc.state in ("active", "activating") and svc.wanted:
                return
            svc.wanted = True
            svc.generation += 1
            generation = svc.generation
        if unit.type == "oneshot":
            self._run_once(unit, svc, generation)
        else:
            threading.Thread(target=self._supervise, args=(unit, svc, generation), daemon=True).start()
            deadline = time.monotonic() + 5
            while svc.state == "activating" or (svc.state == "inactive" and svc.wanted):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)

    def _run_pre(self, unit: Unit) -> bool:
        return all(self._spawn(unit, argv).wait() == 0 for argv in unit.exec_start_pre)

    def _run_once(self, unit: Unit, svc: _Service, generation: int) -> None:
        svc.state = "activating"
        ok = self._run_pre(unit)
        for argv in unit.exec_start if ok else []:
            proc = self._spawn(unit, argv)
            svc.proc = proc
            svc.exit_status = proc.wait()
            if svc.exit_status != 0:
                ok = False
                break
        with self._lock:
            if svc.generation == generation:
                svc.state = ("active" if unit.remain_after_exit else "inactive") if ok else "failed"
                svc.proc = None

    def _supervise(self, unit: Unit, svc: _Service, generation: int) -> None:
        while True:
            with self._lock:
                if not svc.wanted or svc.generation != generation:
                    return
                svc.state = "activating"
            try:
                ok = self._run_pre(unit)
                proc = self._spawn(unit, unit.exec_start[0]) if ok else None
            except (OSError, KeyError, ValueError) as exc:
                svc.log.append(f"start failed: {exc}")
                ok, proc = False, None
            with self._lock:
                if proc is not None:
                    svc.proc, svc.state, svc.started_at = proc, "active", time.time()
            status = proc.wait() if proc is not None else 1
            with self._lock:
                svc.exit_status = status
                if svc.generation != generation or not svc.wanted:
                    return
                restart = unit.restart == "always" or (unit.restart == "on-failure" and status != 0)
                svc.state = "activating" if restart else ("inactive" if status == 0 else "failed")
                svc.proc = None
                if not restart:
                    svc.wanted = False
                    return
            time.sleep(max(unit.restart_sec, 0.1))

    def stop(self, name: str, timeout: float = 5.0) -> None:
        name = _normalize(name)
        with self._lock:
            svc = self._services.get(name)
            if svc is None:
                return
            svc.wanted = False
            svc.generation += 1
            proc = svc.proc
            svc.state = "deactivating" if proc else "inactive"
        if proc is not None:
            _kill_group(proc, timeout)
        with self._lock:
            if svc.state == "deactivating":
                svc.state = "inactive"
            svc.proc = None

    def restart(self, name: str) -> None:
        self.stop(name)
        self.start(name)

    def start_enabled(self) -> None:
        units = self.enabled_units()
        for name in boot_order(units):
            try:
                self.start(name)
            except (KeyError, ValueError, OSError):
                continue

    def stop_all(self, timeout: float = 5.0) -> None:
        with self._lock:
            names = [n for n, s in self._services.items() if s.proc is not None or s.wanted]
        threads = [threading.Thread(target=self.stop, args=(n, timeout)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def status_text(self, name: str) -> str:
        name = _normalize(name)
        loaded = "loaded" if (self.unit_dir / name).is_file() else "not-found"
        enabled = "enabled" if self.is_enabled(name) else "disabled"
        with self._lock:
            svc = self._services.get(name)
            state = svc.state if svc else "inactive"
            pid = svc.proc.pid if svc and svc.proc else None
        lines = [f"● {name}", f"     Loaded: {loaded} ({self.unit_dir / name}; {enabled})", f"     Active: {state}"]
        if pid:
            lines.append(f"   Main PID: {pid}")
        return "\n".join(lines)

    def main_pid(self, name: str) -> int | None:
        with self._lock:
            svc = self._services.get(_normalize(name))
            return svc.proc.pid if svc and svc.proc else None


def _kill_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue
