"""Security groups made real for sandbox instances: an nftables input filter inside each instance's namespace.

EC2 filters a packet at the destination's interface by the ingress rules of the destination's groups; a rule names
a CIDR or another group (the addresses of that group's members). The sandbox does the same: each running instance
gets a table ``inet nbsg`` in its own namespace with ``policy drop`` and one accept per rule, recomputed whenever
the groups, their rules or their members change (the daemon compares the rendered text once a second).

Instance-to-instance traffic is routed by the host (``forwarding`` on each instance's host veth, see hosts.py);
the host's own guard still drops anything that would leave the sandbox's subnet.

One sandbox liberty, kept on purpose: the host (the caller address) may always reach port 22, the sandbox's
console. Bare instances launched in moto's default group are reached that way by tests and by `nbcloud sandbox`.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["IngressRule", "apply", "ingress_rules", "render_ingress"]

TABLE = "nbsg"


@dataclass(frozen=True)
class IngressRule:
    protocol: str  # tcp | udp | icmp | -1 (all)
    from_port: int | None = None
    to_port: int | None = None
    cidrs: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


def ingress_rules(groups: Iterable[Any]) -> list[IngressRule]:
    """The ingress rules of moto's SecurityGroup objects, as plain values."""
    rules = []
    for group in groups:
        for rule in getattr(group, "ingress_rules", []):
            cidr = (rule.ip_range or {}).get("CidrIp")
            source = (rule.source_group or {}).get("GroupId")
            rules.append(IngressRule(str(rule.ip_protocol or "-1"), rule.from_port, rule.to_port,
                                     (cidr,) if cidr else (), (source,) if source else ()))
    return rules


def _ports(rule: IngressRule) -> str:
    if rule.protocol not in ("tcp", "udp") or rule.from_port is None:
        return ""
    if rule.to_port is None or rule.to_port == rule.from_port:
        return f" {rule.protocol} dport {rule.from_port}"
    return f" {rule.protocol} dport {rule.from_port}-{rule.to_port}"


def _protocol(rule: IngressRule) -> str | None:
    if rule.protocol == "-1":
        return ""
    if rule.protocol in ("tcp", "udp", "icmp"):
        return f" meta l4proto {rule.protocol}"
    return None  # a protocol the sandbox does not model: admit nothing for it


def render_ingress(rules: Iterable[IngressRule], members: Mapping[str, Iterable[str]], console_ip: str) -> str:
    """The whole ``inet nbsg`` table for one instance, replacing any previous one in a single transaction."""
    lines = [
        f"table inet {TABLE} {{}}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        "  chain input {",
        "    type filter hook input priority 0; policy drop;",
        "    iif lo accept",
        "    ct state established,related accept",
        f"    ip saddr {console_ip} tcp dport 22 accept",
    ]
    seen: set[str] = set()
    for rule in rules:
        proto = _protocol(rule)
        if proto is None:
            continue
        sources: list[str] = []
        for cidr in rule.cidrs:
            net = ipaddress.ip_network(cidr, strict=False)
            if net.version == 4:
                sources.append(str(net))
        for group in rule.groups:
            sources += [a for a in members.get(group, ())]
        for source in sorted(set(sources)):
            match = "" if source == "0.0.0.0/0" else f" ip saddr {source}"
            line = f"   {match}{proto}{_ports(rule)} accept"
            if line not in seen:
                seen.add(line)
                lines.append(line)
    lines += ["  }", "}", ""]
    return "\n".join(lines)


def apply(netns: str, text: str) -> bool:
    """Load the table into the instance's namespace; False when the namespace is gone (the instance stopped)."""
    done = subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=text, capture_output=True,
                          text=True)
    return done.returncode == 0
