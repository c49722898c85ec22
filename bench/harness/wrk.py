"""Run wrk and parse its report."""

import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

_UNIT_TO_US = {"us": 1.0, "ms": 1_000.0, "s": 1_000_000.0, "m": 60_000_000.0}

_REQUESTS_PER_SEC = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL_REQUESTS = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
# One line of the "Latency Distribution" block printed with --latency,
# for example "     99%    1.21ms".
_PERCENTILE = re.compile(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)


@dataclass
class WrkResult:
    """Figures from one wrk run; latencies are in microseconds."""

    requests_per_sec: float
    requests: int
    non_2xx: int
    socket_errors: int
    p50_us: float | None = None
    p99_us: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def parse_report(text: str) -> WrkResult:
    """Parse wrk's text report; raise ValueError when a figure is missing."""
    rate = _REQUESTS_PER_SEC.search(text)
    total = _TOTAL_REQUESTS.search(text)
    if rate is None or total is None:
        raise ValueError(f"wrk report has no request rate:\n{text}")

    non_2xx = _NON_2XX.search(text)
    errors = _SOCKET_ERRORS.search(text)
    percentiles = {
        int(match[1]): float(match[2]) * _UNIT_TO_US[match[3]]
        for match in _PERCENTILE.finditer(text)
    }
    return WrkResult(
        requests_per_sec=float(rate[1]),
        requests=int(total[1]),
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        p50_us=percentiles.get(50),
        p99_us=percentiles.get(99),
    )


def run_wrk(
    url: str,
    threads: int,
    connections: int,
    duration: int,
    script: Path | None = None,
    latency: bool = False,
) -> WrkResult:
    """Run wrk against `url` for `duration` seconds and parse its report."""
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
    ]
    if script is not None:
        argv += ["-s", str(script)]
    if latency:
        argv.append("--latency")
    argv.append(url)

    completed = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=False,
    )
    if completed.returncode != 0:
        output = (completed.stderr.strip() or completed.stdout.strip()).splitlines()
        raise RuntimeError(
            f"wrk exited with code {completed.returncode}: "
            f"{output[0] if output else 'no output'} (command: {' '.join(argv)})"
        )
    return parse_report(completed.stdout)
