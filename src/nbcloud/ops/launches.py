"""Crash-safe launches: the intent written before the first cloud call, and the sweep that undoes a launch.

`up` records a launch (its id, provider, region) in the store, durably, before it makes anything; every resource
it then makes carries that id as a tag, and RunInstances is sent with a client token derived from it. A launch
that ends in any way but success is undone by :func:`sweep_launch`: by the same process when it can (an error, a
Ctrl-C), or by the next command (``up NAME``, ``down NAME``, ``status``, ``doctor --orphans``) when the process
died (SIGKILL, power loss). A pending launch whose name lock is free has no process behind it: it was interrupted.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..errors import ConflictError, NbcloudError, NotFoundError
from ..providers.base import Provider, TaggedResource
from ..state import LaunchIntent
from .context import Context, Progress, no_progress

__all__ = ["RUN_SETTLE_SECONDS", "Recovery", "describe_recovery", "interrupted_launches", "recover_interrupted",
           "recover_name", "sweep_launch"]

#: after RunInstances was sent without an answer, how long an instance may take to show up in DescribeInstances
#: (AWS is eventually consistent); past this a launch that shows no instance made none
RUN_SETTLE_SECONDS = 5.0

#: the order resources are removed in: instances first (a group or a key pair in use cannot go), data last
_ORDER = {"instance": 0, "key-pair": 1, "security-group": 2, "volume": 3}


@dataclass(frozen=True)
class Recovery:
    """What undoing one launch did: ``removed`` and ``failed`` (could not be removed) name resources."""

    name: str
    launch_id: str
    removed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.failed


def describe_recovery(recovery: Recovery) -> str:
    """One line for a person: what was removed, what is left and the command that removes it."""
    done = ("removed " + ", ".join(recovery.removed) if recovery.removed
            else "removed nothing" if recovery.failed else "nothing had been made yet")
    text = f"launch {recovery.launch_id} of {recovery.name!r}: {done}"
    if recovery.failed:
        text += f"; could not remove {', '.join(recovery.failed)} (`nbcloud down {recovery.name}` retries)"
    return text


def _of_launch(provider: Provider, intent: LaunchIntent) -> list[TaggedResource]:
    return [r for r in provider.tagged_resources(intent.name) if r.launch_id == intent.launch_id]


def _known(intent: LaunchIntent) -> list[TaggedResource]:
    """Resources named without a tag scan: what this process made, and what the launch id alone determines (a tag
    scan may not list a resource yet: AWS is eventually consistent)."""
    found = [TaggedResource("key-pair", key_pair_name(intent.name, intent.launch_id), intent.name, intent.launch_id)]
    if intent.instance_id:
        found.append(TaggedResource("instance", intent.instance_id, intent.name, intent.launch_id))
    return found


def key_pair_name(name: str, launch_id: str) -> str:
    return f"nbcloud-{name}-{launch_id}"


def _merge(*groups: Iterable[TaggedResource]) -> list[TaggedResource]:
    seen: dict[tuple[str, str], TaggedResource] = {}
    for group in groups:
        for resource in group:
            seen.setdefault((resource.kind, resource.resource_id), resource)
    return sorted(seen.values(), key=lambda r: _ORDER.get(r.kind, 9))


def _label(resource: TaggedResource) -> str:
    return f"{resource.kind.replace('-', ' ')} {resource.resource_id}"


def sweep_launch(ctx: Context, provider: Provider, intent: LaunchIntent, *, known: Iterable[TaggedResource] = (),
                 progress: Progress = no_progress, clock=time.time, sleep=time.sleep) -> Recovery:
    """Remove everything launch ``intent`` made (found by its launch-id tag, plus ``known``), then its local files.

    The intent is closed (rolled-back) and the local record, keys and ssh entry forgotten only when all of it is
    gone; otherwise the intent stays pending and the next command sweeps again.
    """
    known = list(known)
    tagged = _of_launch(provider, intent)
    # RunInstances sent but unanswered: the instance may not be listed yet; wait until it is or cannot be
    settle_until = (intent.run_at or 0) + RUN_SETTLE_SECONDS if intent.run_at and not intent.instance_id else 0
    said = False
    while not any(r.kind == "instance" for r in tagged) and clock() < settle_until:
        if not said:
            progress(f"checking whether launch {intent.launch_id} made an instance")
            said = True
        sleep(0.5)
        tagged = _of_launch(provider, intent)
    listed = _merge(tagged, known, [r for r in _known(intent) if r.kind == "instance"])
    removed, failed = [], []
    instances = [r for r in listed if r.kind == "instance"]
    for resource in instances:
        progress(f"removing {_label(resource)}")
        with contextlib.suppress(NotFoundError):
            provider.terminate(resource.resource_id)
    for resource in instances:
        try:
            provider.wait_gone(resource.resource_id, "terminated", 300)
            removed.append(_label(resource))
        except NbcloudError as exc:
            failed.append(f"{_label(resource)} ({exc.message})")
    # scanned again: a root volume went with its instance; the key pair is named by the launch id alone
    rest = _merge(_of_launch(provider, intent), listed, _known(intent))
    shown = {(r.kind, r.resource_id) for r in listed}
    for resource in (r for r in rest if r.kind != "instance"):
        try:
            provider.delete_resource(resource)
        except NbcloudError as exc:
            failed.append(f"{_label(resource)} ({exc.message})")
            continue
        if (resource.kind, resource.resource_id) in shown or resource.kind != "key-pair":
            removed.append(_label(resource))
    recovery = Recovery(intent.name, intent.launch_id, removed, failed)
    if recovery.complete:
        _forget_launch_locally(ctx, intent)
        ctx.store.mark_launch(intent.launch_id, outcome="rolled-back")
    return recovery


def _forget_launch_locally(ctx: Context, intent: LaunchIntent) -> None:
    """The launch's local record, keys, ssh entry and secrets; a record of another launch is not this one's."""
    from .instances import forget_locally

    record = ctx.store.get(intent.name)
    if record is None or record.launch_id in (None, intent.launch_id):
        forget_locally(ctx, intent.name)


@contextlib.contextmanager
def _lock_if_free(ctx: Context, name: str) -> Iterator[bool]:
    """Hold the name's lock if no other process does (True); a held lock means a launch is under way (False)."""
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(ctx.name_lock(name, wait=False))
        free = True
    except ConflictError:
        free = False
    with stack:
        yield free


def interrupted_launches(ctx: Context, name: str | None = None) -> list[LaunchIntent]:
    """Pending launches that no process is running (their name's lock is free)."""
    found = []
    for intent in ctx.store.launches(name):
        with _lock_if_free(ctx, intent.name) as free:
            if free:
                found.append(intent)
    return found


def recover_name(ctx: Context, name: str, progress: Progress = no_progress) -> list[Recovery]:
    """Undo the interrupted launches of ``name``; the caller holds the name's lock."""
    done = []
    for intent in ctx.store.launches(name):
        progress(f"an earlier `up {name}` was interrupted (launch {intent.launch_id}): removing what it made")
        provider = ctx.provider(intent.provider, intent.region, intent.profile)
        done.append(sweep_launch(ctx, provider, intent, progress=progress))
    return done


def recover_interrupted(ctx: Context, progress: Progress = no_progress) -> list[Recovery]:
    """Undo every interrupted launch on this machine (a launch under way in another process is left alone)."""
    done = []
    for name in sorted({i.name for i in ctx.store.launches()}):
        with _lock_if_free(ctx, name) as free:
            if not free:
                continue
            try:
                done += recover_name(ctx, name, progress)
            except NbcloudError as exc:  # e.g. no credentials for its cloud now: say so, keep the launch pending
                done += [Recovery(i.name, i.launch_id, [], [f"what it made ({exc.message})"])
                         for i in ctx.store.launches(name)]
    ctx.store.prune_launches()
    return done
