"""`status` as text: the table, and the notes under it (idle reasons, tunnels, clusters, spot ends)."""

from __future__ import annotations

from typing import Any

from .output import table


def _money(value: float | None) -> str:
    from ..money.cost import format_usd

    return format_usd(value) if value is not None else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def vscode_line(view: Any) -> str:
    return f"\n  vscode: {view.vscode}" if getattr(view, "vscode", None) else ""


def _idle_cell(view: Any) -> str:
    """busy, or how long idle and when the stop comes (from the agent's own clock)."""
    if view.busy:
        return "busy"
    idle = _duration(view.idle_seconds)
    if view.stops_at and view.idle_seconds is not None:
        return f"{idle} (stop {view.stops_at[11:16]} UTC)"
    return idle


def tunnel_line(v: Any) -> str:
    """Forwards, held connections and what the last outage did to them; empty when there is nothing to say."""
    parts = [f"forward 127.0.0.1:{f['local_port']} → {f['remote_port']}" for f in getattr(v, "forwards", [])]
    if getattr(v, "tunnel_fallback", None):
        parts.append(f"plain tunnel ({v.tunnel_fallback}): connections do not outlive an outage")
    if getattr(v, "held_connections", 0):
        parts.append(f"{v.held_connections} connection(s) held")
    o = getattr(v, "last_outage", None)
    if o and o.get("resumed") is not None:
        what = (f"{o['closed']} connection(s) closed (past the resume window)" if o.get("closed")
                else f"{o.get('held', 0)} connection(s) carried through")
        parts.append(f"last outage {o.get('started')}, {o.get('seconds', 0):.0f} s: {what}")
    return f"{v.name}: " + "; ".join(parts) if parts else ""


def tunnel_cell(v: Any) -> str:
    """state:port and, while a tunnel runs, its mode (resumable | plain)."""
    cell = f"{v.tunnel}:{v.local_port}" if v.local_port else v.tunnel
    mode = getattr(v, "tunnel_mode", None)
    return f"{cell} {mode}" if mode else cell


def render_status(views: list[Any]) -> str:
    if not views:
        return ("no instances; start one with `nbcloud up NAME` (or `nbcloud sandbox start`, then "
                "`nbcloud up demo --provider sandbox`)")
    rows = [{
        "name": v.name + ("" if v.managed_here else " *"), "state": v.state, "type": v.instance_type,
        "address": v.host, "up": _duration(v.uptime_seconds),
        "$/h": _money(v.spot_hourly_usd if v.spot_hourly_usd is not None else v.hourly_usd),
        "accrued": _money(v.accrued_usd),
        "budget left": _money(v.budget_remaining_usd) if v.budget_usd else "-",
        "idle": _idle_cell(v), "tunnel": tunnel_cell(v),
        "where": f"{v.provider}/{v.region}" + (" spot" if v.lifecycle == "spot" else ""),
    } for v in views]
    out = table(rows, list(rows[0]))
    notes = [f"{v.name}: {v.idle_reason}" for v in views
             if v.managed_here and v.state in ("running", "unknown") and v.idle_reason]
    foreign = [v for v in views if not v.managed_here]
    if foreign:
        running = sum(v.hourly_usd or 0 for v in foreign if v.state == "running")
        notes.append(f"* made on another machine (keys not here): {len(foreign)} instance(s), "
                     f"{_money(running)}/h while running; accrued counts their current run only")
    notes += [f"{v.name}: spot interruption notice {v.spot_notice}" for v in views if v.spot_notice]
    notes += [line for line in map(tunnel_line, views) if line]
    notes += [_cluster_line(v.name, v.cluster) for v in views if getattr(v, "cluster", None)]
    notes += [line for line in map(_spot_end_line, views) if line]
    return "\n".join([out, *notes])


def _spot_end_line(v: Any) -> str:
    """A spot instance ending or gone, with the cloud's reason (StateReason) when it gave one; else empty."""
    if v.lifecycle != "spot" or v.state not in ("shutting-down", "terminated", "gone"):
        return ""
    again = f"`nbcloud up {v.name}` launches a new one with the same data volume"
    reason = getattr(v, "state_reason", None)
    if getattr(v, "spot_reclaimed", False):
        what = "is reclaiming" if v.state == "shutting-down" else "reclaimed"
        return f"{v.name}: EC2 {what} the spot instance ({reason}); {again}"
    if reason:
        ending = "is ending" if v.state == "shutting-down" else "ended"
        return f"{v.name}: the spot instance {ending} ({reason}); {again}"
    if v.state == "gone":  # the cloud no longer says why (EC2 forgets a terminated instance after about an hour)
        return f"{v.name}: the spot instance is gone (reclaimed or terminated); {again}"
    return ""


def _cluster_line(name: str, cluster: dict[str, Any]) -> str:
    workers = cluster["workers"]
    states = ", ".join(f"{w['instance_id']} {w['state']}" for w in workers) or "none"
    keeper = cluster.get("keeper")
    kept = (f"; spot keeper {keeper['state']} (pid {keeper['pid']}, {len(keeper.get('replacements', []))} replaced)"
            if keeper else "")
    return (f"{name}: {cluster['engine']} cluster {cluster['scheduler_address']}, {len(workers)}/{cluster['desired']} "
            f"worker(s) ({states}), {_money(cluster['hourly_usd'])}/h in all{kept}")
