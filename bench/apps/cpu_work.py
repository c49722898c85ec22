"""CPU-bound work shared by every benchmark app and by the calibration step.

The runner calibrates a loop count so that one call to `burn` takes about
5 ms in one process, and passes it to every server in the
BENCH_CPU_LOOPS environment variable.
"""

import os


def burn(loops: int) -> int:
    """Run `loops` iterations of pure-Python integer arithmetic."""
    total = 0
    for i in range(loops):
        total = (total + i * i) % 1_000_003
    return total


def loops_from_env() -> int:
    """Return the calibrated loop count from BENCH_CPU_LOOPS (0 when unset)."""
    return int(os.environ.get("BENCH_CPU_LOOPS", "0"))
