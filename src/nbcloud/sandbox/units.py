"""The subset of systemd unit files the sandbox's service manager understands (pure parsing, stdlib only).

Keys: ``Type=simple|oneshot``, ``User=``, ``Group=``, ``WorkingDirectory=``, ``Environment=`` (several, quoted),
``EnvironmentFile=`` (``-`` prefix = optional), ``ExecStartPre=``, ``ExecStart=``, ``Restart=always|on-failure|no``,
``RestartSec=``, ``After=``/``Wants=``, ``StandardOutput=``/``StandardError=`` (``append:``, ``file:``,
``inherit``, ``null``, ``journal``).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

__all__ = ["Unit", "boot_order", "parse_env_file", "parse_environment", "parse_timespan", "parse_unit"]


@dataclass(frozen=True)
class Unit:
    name: str
    type: str = "simple"
    user: str | None = None
    group: str | None = None
    working_directory: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    environment_files: list[str] = field(default_factory=list)
    exec_start_pre: list[list[str]] = field(default_factory=list)
    exec_start: list[list[str]] = field(default_factory=list)
    restart: str = "no"
    restart_sec: float = 0.1
    after: list[str] = field(default_factory=list)
    wants: list[str] = field(default_factory=list)
    stdout: str = "journal"
    stderr: str = "inherit"
    remain_after_exit: bool = False


_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|msec|s|sec|second|seconds|m|min|minute|minutes|h|hr|hour|hours|us)?")
_UNITS = {"us": 1e-6, "ms": 0.001, "msec": 0.001, "s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60,
          "min": 60, "minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600}


def parse_timespan(text: str) -> float:
    """``"2"`` → 2.0, ``"500ms"`` → 0.5, ``"1min 30s"`` → 90.0 (systemd's bare number means seconds)."""
    total = 0.0
    matched = False
    for number, unit in _SPAN.findall(text.strip()):
        matched = True
        total += float(number) * _UNITS[unit or "s"]
    if not matched:
        raise ValueError(f"not a time span: {text!r}")
    return total


def parse_environment(value: str) -> dict[str, str]:
    """One ``Environment=`` line: space-separated assignments, each possibly double- or single-quoted."""
    env: dict[str, str] = {}
    for word in shlex.split(value, posix=True):
        if "=" in word:
            key, _, val = word.partition("=")
            env[key] = val
    return env


def parse_env_file(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("export "):
            line = line[len("export ") :]
        key, sep, val = line.partition("=")
        if not sep:
            continue
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] and val[0] in "\"'":
            val = val[1:-1]
        env[key.strip()] = val
    return env


def _command(value: str) -> list[str]:
    # systemd prefixes: "-" ignore failure, "@" argv0, "+"/"!" privileges; we honour "-" by stripping it
    value = value.strip()
    while value[:1] in {"-", "@", "+", "!", ":"}:
        value = value[1:]
    return shlex.split(value)


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    buf = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith(("#", ";"))):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        lines.append(buf + stripped)
        buf = ""
    if buf:
        lines.append(buf)
    return lines


def parse_unit(name: str, text: str) -> Unit:
    section = ""
    values: dict[str, object] = {
        "environment": {}, "environment_files": [], "exec_start_pre": [], "exec_start": [], "after": [],
        "wants": [],
    }
    for line in _logical_lines(text):
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if section == "Unit" and key in ("After", "Wants", "Requires"):
            target = "after" if key == "After" else "wants"
            values[target].extend(value.split())  # type: ignore[attr-defined]
        elif section != "Service":
            continue
        elif key == "Type":
            values["type"] = value
        elif key == "User":
            values["user"] = value or None
        elif key == "Group":
            values["group"] = value or None
        elif key == "WorkingDirectory":
            values["working_directory"] = value.lstrip("-") or None
        elif key == "Environment":
            values["environment"].update(parse_environment(value))  # type: ignore[attr-defined]
        elif key == "EnvironmentFile":
            values["environment_files"].append(value)  # type: ignore[attr-defined]
        elif key == "ExecStartPre":
            if value:
                values["exec_start_pre"].append(_command(value))  # type: ignore[attr-defined]
        elif key == "ExecStart":
            if value:
                values["exec_start"].append(_command(value))  # type: ignore[attr-defined]
            else:
                values["exec_start"] = []
        elif key == "Restart":
            values["restart"] = value
        elif key == "RestartSec":
            values["restart_sec"] = parse_timespan(value)
        elif key == "StandardOutput":
            values["stdout"] = value
        elif key == "StandardError":
            values["stderr"] = value
        elif key == "RemainAfterExit":
            values["remain_after_exit"] = value.lower() in ("yes", "true", "1", "on")
    unit = Unit(name=name, **values)  # type: ignore[arg-type]
    if not unit.exec_start:
        raise ValueError(f"{name}: no ExecStart=")
    if unit.type not in ("simple", "oneshot", "exec", "notify", "forking"):
        raise ValueError(f"{name}: unsupported Type={unit.type}")
    return unit


def boot_order(units: dict[str, Unit]) -> list[str]:
    """Names in an order that honours ``After=`` among the given units (ties by name; cycles broken)."""
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str) -> None:
        if state.get(name) == 2 or name not in units:
            return
        if state.get(name) == 1:
            return  # cycle: systemd breaks it too
        state[name] = 1
        for dep in sorted(units[name].after):
            visit(dep)
        state[name] = 2
        order.append(name)

    for name in sorted(units):
        visit(name)
    return order
