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


def test_held_tunnel_is_not_activity() -> None:
    # issue 14 #9: `up --idle-stop 1m` connects by default, and its tunnel is an ssh connection: presence, not work
    samples = every(10, 60, last=0, ssh_connections=1)
    decision = decide(samples, T0 + 60, Settings(idle_stop_seconds=60))
    assert decision.action == "stop" and "1 ssh connection(s)" in decision.reason
    assert "not activity" in decision.reason


def test_open_tab_is_not_activity() -> None:
    samples = every(10, 3600, last=0, connections=2, terminals=1)
    decision = decide(samples, T0 + 3600, HOUR)
    assert decision.action == "stop" and "2 notebook tab(s)" in decision.reason


def test_terminal_input_keeps_it_up() -> None:
    # a keystroke moves the pty's atime (what `w` shows as IDLE); an open terminal without input does not
    samples = [*every(10, 3590, last=0), quiet(3600, last=0, last_input=T0 + 3590)]
    decision = decide(samples, T0 + 3600, HOUR)
    assert decision.action == "none" and decision.idle_seconds == 10 and "terminal input" in decision.reason
    assert decision.stop_in_seconds == 3590 and not decision.busy
    untouched = every(10, 3600, last=0, last_input=T0 - 100)
    assert decide(untouched, T0 + 3600, HOUR).action == "stop"


def test_sustained_cpu_keeps_it_up() -> None:
    # issue 14 #10: a nohup'd training run, no kernel, no session: its CPU is the activity
    samples = every(10, 7200, last=0, cpu_cores=0.95)
    decision = decide(samples, T0 + 7200, HOUR)
    assert decision.action == "none" and decision.busy and "0.95 CPU cores" in decision.reason
    # the background noise of an idle machine (Jupyter, sshd) is below the threshold
    assert decide(every(10, 3600, last=0, cpu_cores=0.02), T0 + 3600, HOUR).action == "stop"
    # the threshold is a setting
    low = Settings(idle_stop_seconds=3600, cpu_busy_cores=0.01)
    assert decide(every(10, 3600, last=0, cpu_cores=0.02), T0 + 3600, low).action == "none"


def test_cpu_job_ended_counts_from_its_last_sample() -> None:
    samples = every(10, 1000, last=0, cpu_cores=1.0) + every(10, 5000, last=0, cpu_cores=0.0)[101:]
    assert decide(samples, T0 + 4599, HOUR).action == "none"
    decision = decide(samples, T0 + 4600, HOUR)
    assert decision.action == "stop" and "CPU" in decision.reason and "3600s ago" in decision.reason


def test_gpu_use_keeps_it_up() -> None:
    assert decide(every(10, 7200, last=0, gpu_percent=87.0), T0 + 7200, HOUR).action == "none"
    assert decide(every(10, 3600, last=0, gpu_percent=0.0), T0 + 3600, HOUR).action == "stop"


def test_hold_keeps_it_up_and_release_restarts_the_count() -> None:
    held = every(10, 7200, last=0, held="training")
    decision = decide(held, T0 + 7200, HOUR)
    assert decision.action == "none" and "held (training)" in decision.reason
    released = held + every(10, 10800, last=0)[721:]
    assert decide(released, T0 + 7200 + 3599, HOUR).action == "none"
    assert decide(released, T0 + 7200 + 3600, HOUR).action == "stop"
    # a hold wins over an unreadable Jupyter's "busy" too (it is the user's word)
    assert "held" in decide([Sample(t=T0, jupyter_error="x", held="h")], T0, HOUR).reason


def test_busy_reports_no_stop_time() -> None:
    decision = decide([quiet(0, busy_kernels=1)], T0, Settings(idle_stop_seconds=60))
    assert decision.busy and decision.reason.startswith("busy: 1 kernel(s) busy")
    idle = decide(every(10, 20, last=0), T0 + 20, Settings(idle_stop_seconds=60))
    assert not idle.busy and idle.stop_in_seconds == 40 and "idle 20s of 60s" in idle.reason


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
    # the kernels' last message; not the terminal's output, not the server's (an open tab's polling moves it)
    assert last == parse_iso("2026-11-23T12:03:29.199639Z")
    saved = ["2026-11-23T12:04:10.000000Z", None]
    assert summarize_jupyter(STATUS, KERNELS, TERMINALS, saved)[2] == parse_iso(saved[0])
    assert summarize_jupyter({"last_activity": "2026-11-23T13:00:00Z"}, [], []) == (0, 0, None, 0)
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


# /proc/PID/stat lines recorded here: a bash on /dev/pts/3 (tty_nr 34819), a daemon without a terminal, a zombie,
# and a command name with a space and a parenthesis.
STAT_BASH = ("4242 (bash) S 4200 4242 4242 34819 4300 4194560 1200 300 0 0 35 12 4 2 20 0 1 0 987654 9000000 "
             "1100 18446744073709551615 1 1 0 0 0 0 65536 3686404 1266761467 0 0 0 17 1 0 0 0 0 0")
STAT_DAEMON = ("77 (python3 x) y) R 1 77 77 0 -1 4194560 9 0 0 0 500 100 0 0 20 0 2 0 1000 1 1 1 1 1 0 0 0 0 0 0 0 0 "
               "17 0 0 0 0 0 0")
STAT_ZOMBIE = "99 (sh) Z 1 99 99 0 -1 4194560 0 0 0 0 1 1 0 0 20 0 1 0 5000 0 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0"


def test_parse_proc_stat() -> None:
    from nbcloud.remote.agent.nbcloud_agent import ProcStat, parse_stat, pts_number

    assert parse_stat(STAT_BASH) == ProcStat(ppid=4200, tty_nr=34819, ticks=35 + 12 + 4 + 2, start=987654)
    daemon = parse_stat(STAT_DAEMON)
    assert daemon is not None and daemon.ticks == 600 and daemon.ppid == 1
    assert parse_stat(STAT_ZOMBIE) is None and parse_stat("garbage") is None
    assert pts_number(34819) == 3  # major 136, minor 3
    assert pts_number(0) is None and pts_number(0x0401) is None  # no terminal; tty1 (a console)
    assert pts_number((137 << 8) | 5) == 261  # the second block of 256


def test_cpu_cores_between_two_scans() -> None:
    from nbcloud.remote.agent.nbcloud_agent import ProcStat, cpu_cores, descendants

    before = {1: ProcStat(0, 0, 1000, 10), 2: ProcStat(1, 0, 50, 500), 3: ProcStat(1, 0, 7, 600)}
    after = {1: ProcStat(0, 0, 1000, 10),  # idle
             2: ProcStat(1, 0, 1050, 500),  # one core for the 10 s
             4: ProcStat(1, 0, 100, 2100),  # born after the first scan (uptime 2000 ticks): all of it counts
             5: ProcStat(1, 0, 999, 1500)}  # already running but unseen before (outside the scope): not counted
    assert cpu_cores(before, after, before_uptime_ticks=2000, elapsed=10.0, hz=100) == (1000 + 100) / 100 / 10
    # a pid reused by a new process is not the old one's growth
    assert cpu_cores({2: ProcStat(1, 0, 5000, 1)}, {2: ProcStat(1, 0, 10, 3000)}, 2000, 10.0, 100) == 0.01
    assert cpu_cores({}, {}, 0, 0.0, 100) is None
    assert descendants({10}, {10: 1, 11: 10, 12: 11, 13: 1}) == {10, 11, 12}


def test_hold_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from nbcloud.remote.agent.nbcloud_agent import read_hold

    path = tmp_path / "hold"
    assert read_hold(str(path)) is None
    path.write_text("")
    assert read_hold(str(path)) == "nbcloud hold"
    path.write_text("training run\nmore\n")
    assert read_hold(str(path)) == "training run"


def test_processes_see_cpu_and_pty_input() -> None:
    """The scan on this machine's real /proc: a busy child's CPU, and a keystroke on a pty a child reads."""
    import fcntl
    import os
    import subprocess
    import sys
    import termios
    import time
    from pathlib import Path

    from nbcloud.remote.agent.nbcloud_agent import Processes, parse_stat

    def grandchild(code: str) -> list[str]:  # the agent leaves out itself and its own children (nvidia-smi)
        return ["sh", "-c", '"$0" -c "$1" & wait', sys.executable, code]

    procs = Processes()
    started = time.monotonic()
    procs.sample()
    # burns until killed: a process that exits between two scans is not counted (only the living are scanned)
    busy = subprocess.Popen(grandchild("while True: pass"), start_new_session=True)
    master, slave = os.openpty()

    def own_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    reader = subprocess.Popen(grandchild("import sys, time\nsys.stdin.readline()\ntime.sleep(60)"), stdin=slave,
                              start_new_session=True, preexec_fn=own_terminal)
    try:
        time.sleep(1.0)  # the burner burns; the reader is waiting on its terminal
        typed = time.time()
        os.write(master, b"x\n")
        time.sleep(0.5)
        burner = int(Path(f"/proc/{busy.pid}/task/{busy.pid}/children").read_text().split()[0])
        # read before the scan: the scan reads the same counter later, so it saw at least this much (a figure read
        # after the scan also counts what the burner burned while a loaded machine made the scan slow)
        burned = parse_stat(Path(f"/proc/{burner}/stat").read_text())
        cores, last_input = procs.sample()
        window = time.monotonic() - started  # at least the scan's own interval
    finally:
        for proc in (busy, reader):
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
        os.close(master)
        os.close(slave)
    # the scan saw at least what the burner burned (however little CPU a loaded machine gave it), other processes
    # on the machine only add to it
    assert burned is not None and burned.ticks > 0
    assert cores is not None and cores >= burned.ticks / procs.hz / window
    # the pty's atime moves on a read, at a granularity of 8 s (the kernel's tty_update_time)
    assert last_input is not None and typed - 9 <= last_input <= time.time() + 1


def test_the_agent_looks_again_each_second_while_jupyter_is_starting_then_at_its_period() -> None:
    """Right after `up`, the check before Jupyter's start said "not listening": `status` showed that for up to a
    period (10 s). While Jupyter does not answer the next check comes after 1 s, for at most STARTING_CHECKS checks
    in a row; a Jupyter stopped for good then gets the period until it answers again (not 60 fast, 1 slow, 60 fast
    ... as a count reset by the slow check would do)."""
    from nbcloud.remote.agent.nbcloud_activity import STARTING_CHECKS, next_period, unreadable_count

    starting = Sample(t=0.0, jupyter_error="not listening (starting, or stopped)")
    answering = Sample(t=0.0)

    def periods(samples: list[Sample]) -> list[float]:  # what the agent's loop waits before each next check
        out, count = [], 0
        for sample in samples:
            count = unreadable_count(sample, count)
            out.append(next_period(sample, 10.0, count))
        return out

    stopped = periods([starting] * (3 * STARTING_CHECKS))
    assert stopped[:STARTING_CHECKS - 1] == [1.0] * (STARTING_CHECKS - 1)
    assert set(stopped[STARTING_CHECKS:]) == {10.0}, "once slow, slow until Jupyter answers"
    again = periods([starting] * (2 * STARTING_CHECKS) + [answering, starting, starting])
    assert again[-3:] == [10.0, 1.0, 1.0], "an answer starts the count again"
    assert periods([starting, starting, answering]) == [1.0, 1.0, 10.0]
    assert next_period(None, 10.0, 0) == 10.0
    assert next_period(starting, 0.5, 1) == 0.5  # never slower than the period asked for
