"""Start and stop server processes so that none outlives the benchmark.

Each server starts in its own session, so its process group contains the
server and every child that does not leave the group. Before a stop, the
harness also records every descendant (pid and start time from /proc),
because a server may move its workers into other process groups. Stopping
sends SIGTERM to the group, waits, then sends SIGKILL to the group and to
each recorded descendant that is still the same process.
"""

import http.client
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

# Every server started and not yet stopped, so that an interrupted run can
# stop them all.
_live_servers: list["ServerProcess"] = []


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free when checked."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ProcStat(NamedTuple):
    """Fields of /proc/PID/stat; times are in clock ticks."""

    parent: int
    start_time: int
    # User and system time of the process and of its reaped children.
    cpu_ticks: int


def read_stat(pid: int) -> ProcStat | None:
    """Return the /proc/PID/stat fields of `pid`, or None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in brackets may contain spaces, so split after it.
    # fields[0] is field 3 of proc(5), the state.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return ProcStat(
        parent=int(fields[1]),
        start_time=int(fields[19]),
        cpu_ticks=sum(int(n) for n in fields[11:15]),
    )


def descendants(root_pid: int) -> dict[int, ProcStat]:
    """Return the live descendants of `root_pid`, by pid."""
    stats = {}
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = read_stat(int(entry))
        if stat is None:
            continue
        stats[int(entry)] = stat
        children.setdefault(stat.parent, []).append(int(entry))

    found = {}
    stack = list(children.get(root_pid, []))
    while stack:
        pid = stack.pop()
        found[pid] = stats[pid]
        stack.extend(children.get(pid, []))
    return found


def _is_same_process(pid: int, start_time: int) -> bool:
    stat = read_stat(pid)
    return stat is not None and stat.start_time == start_time


class ServerProcess:
    """One server under test, started in its own session."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], log_path: Path):
        self.argv = argv
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # Closed in stop(), after the server has exited.
        self._log = open(log_path, "wb")
        try:
            self.popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError:
            self._log.close()
            raise
        _live_servers.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 20) -> str:
        """Return the last `lines` lines of the server's output."""
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, port: int, path: str, timeout: float) -> None:
        """Wait until GET `path` returns 200, or raise RuntimeError."""
        deadline = time.monotonic() + timeout
        last_error = "no attempt made"
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"server exited with code {self.popen.returncode} before "
                    f"responding; last output:\n{self.log_tail()}"
                )
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                try:
                    conn.request("GET", path)
                    response = conn.getresponse()
                    response.read()
                finally:
                    conn.close()
                if response.status == 200:
                    return
                last_error = f"GET {path} returned status {response.status}"
            except (OSError, http.client.HTTPException) as err:
                last_error = f"GET {path} failed: {err!r}"
            time.sleep(0.1)
        raise RuntimeError(
            f"server did not return 200 within {timeout:g} s ({last_error}); "
            f"last output:\n{self.log_tail()}"
        )

    def stop(self, grace: float = 5.0) -> None:
        """Stop the server and all its descendants: SIGTERM, then SIGKILL."""
        if self not in _live_servers:
            return
        recorded = [(pid, stat.start_time) for pid, stat in descendants(self.pid).items()]

        self._signal_group(signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(
            _is_same_process(pid, start) for pid, start in recorded
        ):
            time.sleep(0.05)

        self._signal_group(signal.SIGKILL)
        for pid, start_time in recorded:
            if _is_same_process(pid, start_time):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            print(f"warning: server pid {self.pid} did not exit after SIGKILL")

        self._log.close()
        _live_servers.remove(self)

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass


def stop_all_servers() -> None:
    """Stop every server that is still running."""
    for server in list(_live_servers):
        server.stop(grace=2.0)
