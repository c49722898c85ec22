"""Start and stop server processes so that none outlives the benchmark.

Each server starts in its own session, so its process group holds the
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

# Every server started and not yet stopped, so that an interrupted run can
# stop them all.
_live_servers: list["ServerProcess"] = []


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free when checked."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_times() -> tuple[int, int]:
    """Return (busy, total) clock ticks summed over all CPUs since boot."""
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    # guest and guest_nice (fields 8 and 9) are already counted in user.
    total = sum(fields[:8])
    return total - idle, total


def busy_cores(interval: float) -> float:
    """Return how many cores' worth of CPU was busy during `interval` seconds."""
    busy_start, total_start = _cpu_times()
    time.sleep(interval)
    busy_end, total_end = _cpu_times()
    if total_end == total_start:
        return 0.0
    fraction = (busy_end - busy_start) / (total_end - total_start)
    return fraction * (os.cpu_count() or 1)


def _read_stat(pid: int) -> tuple[int, int] | None:
    """Return (parent pid, start time in clock ticks) of `pid`.

    Returns None when the process is gone or is a zombie.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in brackets may contain spaces, so split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])


def _descendants(root_pid: int) -> list[tuple[int, int]]:
    """Return (pid, start time) of every live descendant of `root_pid`."""
    children: dict[int, list[int]] = {}
    start_times: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read_stat(int(entry))
        if stat is None:
            continue
        parent, start_time = stat
        children.setdefault(parent, []).append(int(entry))
        start_times[int(entry)] = start_time

    found = []
    stack = list(children.get(root_pid, []))
    while stack:
        pid = stack.pop()
        found.append((pid, start_times[pid]))
        stack.extend(children.get(pid, []))
    return found


def _is_same_process(pid: int, start_time: int) -> bool:
    stat = _read_stat(pid)
    return stat is not None and stat[1] == start_time


class ServerProcess:
    """One server under test, started in its own session."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], log_path: Path):
        self.argv = argv
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # Closed in stop(), after the server has exited.
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
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
                    f"answering; last output:\n{self.log_tail()}"
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
            f"server did not answer within {timeout:g} s ({last_error}); "
            f"last output:\n{self.log_tail()}"
        )

    def stop(self, grace: float = 5.0) -> None:
        """Stop the server and all its descendants: SIGTERM, then SIGKILL."""
        if self not in _live_servers:
            return
        descendants = _descendants(self.pid)

        self._signal_group(signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(
            _is_same_process(pid, start) for pid, start in descendants
        ):
            time.sleep(0.05)

        self._signal_group(signal.SIGKILL)
        for pid, start_time in descendants:
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
