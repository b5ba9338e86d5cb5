"""Decisions about a cluster, as pure functions: how many workers to launch or end, what it costs, whether two
Python environments are the same."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["ScalePlan", "cluster_hourly", "freeze_difference", "scale_plan"]

ALIVE = ("pending", "running")


@dataclass(frozen=True)
class ScalePlan:
    launch: int
    terminate: tuple[str, ...]
    replaced: tuple[str, ...] = ()  # workers that are gone or going (reclaimed spot, stopped): counted again


def scale_plan(workers: Sequence[tuple[str, str]], desired: int) -> ScalePlan:
    """``workers``: (instance id, state) of the cluster's live instances, oldest first. A worker that is not alive
    (stopped, being reclaimed, or "notice": a spot worker told it will be reclaimed) is ended and replaced; extra
    ones are ended newest first."""
    if desired < 0:
        raise ValueError("a cluster cannot have fewer than 0 workers")
    alive = [iid for iid, state in workers if state in ALIVE]
    dead = tuple(iid for iid, state in workers if state not in ALIVE and state != "terminated")
    extra = tuple(reversed(alive[desired:])) if len(alive) > desired else ()
    return ScalePlan(launch=max(0, desired - len(alive)), terminate=dead + extra,
                     replaced=tuple(iid for iid, state in workers
                                    if state in ("shutting-down", "stopping", "stopped", "notice")))


def cluster_hourly(scheduler_hourly: float | None, worker_hourly: Iterable[float | None]) -> float | None:
    """The whole cluster's $/h: the notebook's instance plus every running worker (unknown prices count as 0 but
    make the total None only when nothing is known)."""
    prices = [p for p in [scheduler_hourly, *worker_hourly] if p is not None]
    return round(sum(prices), 6) if prices else None


def _parse(freeze: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in freeze.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        pins[name.strip().lower().replace("_", "-")] = version.strip() if sep else line
    return pins


def freeze_difference(expected: str, actual: str) -> str | None:
    """None when both `pip freeze` listings name the same packages at the same versions; else a short summary."""
    a, b = _parse(expected), _parse(actual)
    if a == b:
        return None
    changed = sorted(k for k in a.keys() & b.keys() if a[k] != b[k])
    missing = sorted(a.keys() - b.keys())
    extra = sorted(b.keys() - a.keys())
    parts = [f"{k} {a[k]}≠{b[k]}" for k in changed[:3]]
    parts += [f"missing {k}" for k in missing[:3]] + [f"extra {k}" for k in extra[:3]]
    return ", ".join(parts)
