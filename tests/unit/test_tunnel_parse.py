"""Pure parts of the tunnel: ssh stderr classification, the ssh command line, the state-file schema."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from nbcloud.ssh.tunnel import Forward, TunnelState, build_ssh_argv, classify_line, listening_ports


@pytest.mark.parametrize(
    ("line", "kind", "reason_part"),
    [
        ('Authenticated to 10.203.1.2 ([10.203.1.2]:22) using "publickey".', "auth", "authenticated"),
        ("Timeout, server 10.203.1.2 not responding.", "lost", "keepalive"),
        ("ssh: connect to host 10.203.1.2 port 22: Connection refused", "fail", "refused"),
        ("ssh: connect to host 10.203.1.2 port 22: Connection timed out", "fail", "timed out"),
        ("ssh: connect to host 10.203.1.2 port 22: Invalid argument", "fail", "unreachable"),
        ("ssh: connect to host 10.203.1.2 port 22: Network is unreachable", "fail", "unreachable"),
        ("ssh: connect to host 10.203.1.2 port 22: No route to host", "fail", "unreachable"),
        ("ssh: Could not resolve hostname ec2-x: Name or service not known", "fail", "resolve"),
        ("bind [127.0.0.1]:8888: Address already in use", "port_busy", "local port 8888 is in use"),
        ("Could not request local forwarding.", "port_busy", "local port"),
        ("Host key verification failed.", "hostkey", "host key verification failed"),
        ("@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @", "hostkey", "pinned"),
        ("No ED25519 host key is known for nb-x and you have requested strict checking.", "hostkey", "pinned"),
        ("root@10.203.1.2: Permission denied (publickey).", "reject", "authentication failed"),
        ("kex_exchange_identification: read: Connection reset by peer", "reject", "handshake"),
        ("Connection closed by 10.203.1.2 port 22", "lost", "closed"),
        ("client_loop: send disconnect: Broken pipe", "lost", "closed"),
        ("Connection to 10.203.1.2 closed by remote host.", "lost", "closed"),
    ],
)
def test_classify_line(line: str, kind: str, reason_part: str) -> None:
    ev = classify_line(line)
    assert ev is not None and ev.kind == kind and reason_part in ev.reason


@pytest.mark.parametrize(
    "line",
    [
        "",
        "channel 2: open failed: connect failed: Connection refused",  # the remote port, not the tunnel
        "Transferred: sent 3652, received 4172 bytes, in 2.8 seconds",
        "Warning: Permanently added 'nb-x' (ED25519) to the list of known hosts.",
    ],
)
def test_noise_is_not_an_event(line: str) -> None:
    assert classify_line(line) is None


def test_ssh_argv_has_the_contract_options_and_no_secrets() -> None:
    fws = [Forward(8888, 8888, "jupyter"), Forward(9999, 8889, "gateway")]
    argv = build_ssh_argv("nb-x", fws, Path("/cfg"), keepalive_interval=2, keepalive_count=3, connect_timeout=5)
    assert argv[:4] == ["ssh", "-F", "/cfg", "-N"] and argv[-1] == "nb-x"
    opts = {argv[i + 1] for i, a in enumerate(argv) if a == "-o"}
    assert {"ExitOnForwardFailure=yes", "BatchMode=yes", "ConnectTimeout=5", "ServerAliveInterval=2",
            "ServerAliveCountMax=3", "LogLevel=VERBOSE", "StrictHostKeyChecking=yes"} <= opts
    forwards = [argv[i + 1] for i, a in enumerate(argv) if a == "-L"]
    assert forwards == ["127.0.0.1:8888:127.0.0.1:8888", "127.0.0.1:9999:127.0.0.1:8889"]
    assert not any("token" in a.lower() for a in argv)


def test_state_roundtrip_ignores_unknown_keys() -> None:
    st = TunnelState(name="x", state="up", since="2024-01-01T00:00:00.000Z", reason="connected",
                     local_ports={"jupyter": 8888}, pid=1, ssh_pid=2, attempts=0)
    raw = json.loads(st.to_json())
    assert raw["local_ports"] == {"jupyter": 8888} and raw["state"] == "up"
    raw["added_later"] = 1  # a newer writer must not break an older reader
    assert TunnelState.from_dict(raw) == st


def test_listening_ports_sees_a_listener() -> None:
    if listening_ports() is None:
        pytest.skip("no /proc/net/tcp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert port not in (listening_ports() or set())
        s.listen()
        assert port in (listening_ports() or set())
