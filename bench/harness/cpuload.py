"""Measure CPU time used by programs outside the benchmark.

wrk, the server under test and everything else on the machine share the
same cores, so other work lowers every figure by an unknown amount. The
harness reports how much CPU the rest of the machine used: all busy time
in /proc/stat, minus the time of this process and its reaped children
(wrk), minus the time of the server's process tree.
"""

import os
import time
from pathlib import Path

from harness.process import descendants, read_stat

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Cores' worth of CPU used by other programs from which a measured run is
# marked as disturbed in the table.
DISTURBED_CORES = 0.25


def _machine_busy_ticks() -> int:
    """Return busy clock ticks summed over all CPUs since boot."""
    first_line = Path("/proc/stat").read_text().split("\n", 1)[0]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest
    # time is already part of user time.
    fields = [int(n) for n in first_line.split()[1:9]]
    return sum(fields) - fields[3] - fields[4]


def _own_ticks() -> float:
    times = os.times()
    seconds = times.user + times.system + times.children_user + times.children_system
    return seconds * CLOCK_TICKS


def _tree_ticks(root_pid: int) -> int:
    """Return the CPU ticks of `root_pid` and its live descendants."""
    root = read_stat(root_pid)
    total = root.cpu_ticks if root is not None else 0
    return total + sum(stat.cpu_ticks for stat in descendants(root_pid).values())


class OtherLoad:
    """CPU used by other programs from construction until `cores()` is called.

    `server_pid` is the root of the server's process tree, or None when
    no server is running.
    """

    def __init__(self, server_pid: int | None = None):
        self.server_pid = server_pid
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float, float]:
        server = _tree_ticks(self.server_pid) if self.server_pid else 0
        return time.monotonic(), _machine_busy_ticks(), _own_ticks(), server

    def cores(self) -> float:
        """Return the cores' worth of CPU that other programs used meanwhile."""
        start_time, start_busy, start_own, start_server = self._start
        end_time, end_busy, end_own, end_server = self._sample()
        elapsed = end_time - start_time
        if elapsed <= 0:
            return 0.0
        other_ticks = (end_busy - start_busy) - (end_own - start_own) - (end_server - start_server)
        return max(0.0, other_ticks / CLOCK_TICKS / elapsed)


def wait_until_idle(threshold: float, timeout: float) -> float:
    """Wait up to `timeout` seconds for other programs to use under `threshold` cores.

    Samples one second at a time and returns the last sample, in cores.
    """
    deadline = time.monotonic() + timeout
    while True:
        load = OtherLoad()
        time.sleep(1.0)
        other = load.cores()
        if other < threshold or time.monotonic() >= deadline:
            return other
