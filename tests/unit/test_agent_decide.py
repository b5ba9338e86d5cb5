"""The agent's pure parts: decide() over recorded sample sequences, the /proc/net/tcp parser, Jupyter summaries."""

from __future__ import annotations

from nbcloud.remote.agent.nbcloud_agent import (
    Sample,
    Settings,
    count_ssh,
    decide,
    parse_iso,
    prune,
    summarize_jupyter,
)

T0 = 1_700_000_000.0
HOUR = Settings(idle_stop_seconds=3600)


def quiet(t: float, last: float | None = None, **kw: object) -> Sample:
    return Sample(t=T0 + t, last_activity=None if last is None else T0 + last, **kw)  # type: ignore[arg-type]


def every(period: float, until: float, **kw: object) -> list[Sample]:
    return [quiet(t, **kw) for t in range(0, int(until) + 1, int(period))]


def test_idle_long_enough_stops() -> None:
    samples = every(10, 3600, last=0)
    decision = decide(samples, T0 + 3600, HOUR)
    assert decision.action == "stop" and decision.idle_seconds == 3600
    assert "idle for 3600s" in decision.reason


def test_not_yet_idle_long_enough() -> None:
    decision = decide(every(10, 3590, last=0), T0 + 3590, HOUR)
    assert decision.action == "none" and decision.idle_seconds == 3590


def test_busy_kernel_is_activity() -> None:
    samples = [*every(10, 3500, last=0), quiet(3600, last=0, busy_kernels=1)]
    decision = decide(samples, T0 + 3600, HOUR)
    assert decision.action == "none" and decision.idle_seconds == 0 and "busy" in decision.reason


def test_busy_kernel_long_ago_then_idle() -> None:
    samples = [quiet(0, busy_kernels=1), *every(10, 4000, last=0)[1:]]
    assert decide(samples, T0 + 3599, HOUR).action == "none"
    assert decide(samples, T0 + 3600, HOUR).action == "stop"


def test_kernel_idle_but_recent_last_activity() -> None:
    # the kernel finished 100 s ago: idle counts from its last_activity, not from the agent's start
    samples = every(10, 3700, last=3600)
    decision = decide(samples, T0 + 3700, HOUR)
    assert decision.action == "none" and decision.idle_seconds == 100


def test_ssh_tunnel_open_is_activity() -> None:
    samples = every(10, 7200, last=0, ssh_connections=1)
    decision = decide(samples, T0 + 7200, HOUR)
    assert decision.action == "none" and "ssh" in decision.reason


def test_ssh_closed_counts_from_its_last_sighting() -> None:
    samples = every(10, 1000, last=0, ssh_connections=1) + every(10, 5000, last=0)[101:]
    assert decide(samples, T0 + 4599, HOUR).action == "none"
    assert decide(samples, T0 + 4600, HOUR).action == "stop"


def test_terminal_activity_keeps_it_up() -> None:
    # a terminal's output moves its last_activity (the summary folds it in)
    samples = [*every(10, 3600, last=0, terminals=1)[:-1], quiet(3600, last=3590, terminals=1)]
    decision = decide(samples, T0 + 3600, HOUR)
    assert decision.action == "none" and decision.idle_seconds == 10


def test_open_notebook_connection_is_activity() -> None:
    samples = every(10, 7200, last=0, connections=2)
    assert decide(samples, T0 + 7200, HOUR).action == "none"


def test_jupyter_unreachable_never_stops() -> None:
    samples = every(10, 3000, last=0) + [
        Sample(t=T0 + t, jupyter_error="connection refused") for t in range(3010, 9000, 10)
    ]
    decision = decide(samples, T0 + 9000, HOUR)
    assert decision.action == "none" and "unreadable" in decision.reason


def test_idle_never_exceeds_what_was_observed() -> None:
    # the agent restarted a minute ago; Jupyter's last activity was two hours ago: wait a full hour from now
    samples = [quiet(7200 + t, last=0) for t in range(0, 61, 10)]
    decision = decide(samples, T0 + 7260, HOUR)
    assert decision.action == "none" and decision.idle_seconds == 60


def test_idle_stop_off() -> None:
    decision = decide(every(10, 90000, last=0), T0 + 90000, Settings(idle_stop_seconds=None))
    assert decision.action == "none" and "off" in decision.reason


def test_no_samples() -> None:
    assert decide([], T0, HOUR).action == "none"


def test_cost_cap_stops_with_margin() -> None:
    cap = Settings(idle_stop_seconds=None, max_cost_usd=1.0, hourly_usd=1.0)
    busy = [quiet(0, busy_kernels=1)]
    # cap at 3600 s of running; stop once accrued + 2*10 + 60 >= 3600
    assert decide(busy, T0, cap, accrued_seconds=3519, check_period=10).action == "none"
    decision = decide(busy, T0, cap, accrued_seconds=3520, check_period=10)
    assert decision.action == "stop" and "cost cap $1.00" in decision.reason
    # the cap wins over activity and even over an unreadable Jupyter
    unreadable = [Sample(t=T0, jupyter_error="x")]
    assert decide(unreadable, T0, cap, accrued_seconds=3600).action == "stop"
    # no hourly price known: no cap decision
    assert decide(busy, T0, Settings(max_cost_usd=1.0), accrued_seconds=1e9).action == "none"


def test_prune_keeps_what_matters() -> None:
    samples = [*every(10, 100, last=0), quiet(110, busy_kernels=1), *every(10, 200, last=0)[12:]]
    kept = prune(samples)
    assert kept[0].t == T0 + 110
    assert decide(kept, T0 + 200, HOUR) == decide(samples, T0 + 200, HOUR)
    quiet_only = every(10, 100, last=0)
    assert prune(quiet_only) == quiet_only


# What jupyter_server 2.21.1 answered here (GET /api/status, /api/kernels, /api/terminals).
STATUS = {"connections": 1, "kernels": 1, "last_activity": "2026-11-23T12:03:29.199639Z",
          "started": "2026-11-23T12:03:23.830474Z"}
KERNELS = [{"id": "aebf728d-e9cf-414c-8c74-429edc00255d", "name": "python3",
            "last_activity": "2026-11-23T12:03:29.199639Z", "execution_state": "busy", "connections": 1},
           {"id": "b", "name": "python3", "last_activity": "2026-11-23T12:01:00.000000Z",
            "execution_state": "idle", "connections": 0}]
TERMINALS = [{"name": "1", "last_activity": "2026-11-23T12:05:00.000000Z"}]


def test_summarize_real_answers() -> None:
    busy, connections, last, terms = summarize_jupyter(STATUS, KERNELS, TERMINALS)
    assert (busy, connections, terms) == (1, 1, 1)
    assert last == parse_iso("2026-11-23T12:05:00.000000Z")
    assert summarize_jupyter({}, [], []) == (0, 0, None, 0)
    assert parse_iso("garbage") is None and parse_iso(None) is None


# Recorded on a host with sshd: one session from 10.200.1.1 (a tunnel), one listening socket, one outgoing ssh.
PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 20311 1 0
   1: 0100007F:22B8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 30212 1 0
   2: 0201C80A:0016 0101C80A:D6A2 01 00000000:00000000 02:0009F4A8 00000000     0        0 40113 4 0
   3: 0201C80A:C35A 0101C80A:0016 01 00000000:00000000 00:00000000 00000000  1000        0 40555 1 0
   4: 0201C80A:0016 0101C80A:D6A4 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0
"""
PROC_NET_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000
   1: 0000000000000000FFFF00000201C80A:0016 0000000000000000FFFF00000101C80A:E0F2 01 00000000:00000000 02:000A
"""


def test_count_ssh_connections() -> None:
    assert count_ssh(PROC_NET_TCP) == 1  # not the listener, not the outgoing one, not TIME_WAIT
    assert count_ssh(PROC_NET_TCP6) == 1
    assert count_ssh(PROC_NET_TCP, port=8888) == 0
    assert count_ssh("") == 0
    # instances sharing one network (loopback sandbox): only sessions to this machine's own address count
    assert count_ssh(PROC_NET_TCP, address="10.200.1.2") == 1
    assert count_ssh(PROC_NET_TCP, address="10.200.1.3") == 0
    assert count_ssh(PROC_NET_TCP6, address="10.200.1.2") == 1
    assert count_ssh(PROC_NET_TCP6, address="127.0.0.1") == 0


def test_environment_says_where_imds_and_jupyter_are() -> None:
    from nbcloud.remote.agent.nbcloud_agent import _env_overrides

    env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.9.0.5:8169/", "NBCLOUD_JUPYTER_IP": "127.9.0.5"}
    found = _env_overrides({"jupyter_url": "http://127.0.0.1:8888"}, env)
    assert found == {"imds_url": "http://127.9.0.5:8169", "jupyter_url": "http://127.9.0.5:8888",
                     "ssh_address": "127.9.0.5"}
    assert _env_overrides({}, {"NBCLOUD_SSH_PORT": "2222"}) == {"ssh_port": 2222}
    assert _env_overrides({"ssh_port": 22}, {"NBCLOUD_SSH_PORT": "2222"}) == {}
    # the config file's own IMDS wins; without the variables nothing changes (AWS: 169.254.169.254, 127.0.0.1)
    assert _env_overrides({"imds_url": "http://x"}, env).get("imds_url") is None
    assert _env_overrides({"jupyter_url": "http://127.0.0.1:8888"}, {}) == {}
