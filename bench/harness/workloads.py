"""The four workloads, CPU calibration, and one measured case.

A case is one workload against one server: start the server on a free
port, wait until it returns 200, check one response body, warm up, run wrk
`repeats` times, and stop the server. The CPU workload starts the server
once per run instead, and measures the cores' limit before each run and
after the last, while no server runs.
"""

import hashlib
import http.client
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.cpuload import DISTURBED_CORES, OtherLoad, wait_until_idle
from harness.process import ServerProcess, free_port
from harness.servers import APPS_DIR, BENCH_DIR, NUM_WORKERS, ServerSpec, server_env
from harness.wrk import WrkResult, run_wrk

sys.path.insert(0, str(APPS_DIR))
from cpu_work import burn  # noqa: E402

UPLOAD_SIZE = 1024 * 1024
# The same bytes that wrk/post_1mib.lua posts.
UPLOAD_BODY = b"x" * UPLOAD_SIZE
UPLOAD_SCRIPT = BENCH_DIR / "wrk" / "post_1mib.lua"


@dataclass
class Workload:
    """One workload: the request wrk sends and the servers it runs against.

    `kind` selects how rows are compared: "throughput" divides workgate's
    req/s by each other server's, "cpu" divides each server's req/s by the
    cores' limit, and "latency" subtracts uvicorn's percentiles from
    workgate's.
    """

    key: str
    number: int
    title: str
    kind: str
    method: str
    path: str
    connections: int
    servers: tuple[str, ...]
    expected: dict
    body: bytes | None = None
    script: Path | None = None
    latency: bool = False


@dataclass
class Calibration:
    """Loop count for the CPU workload and the CPU time of one call, in ms.

    The time is measured before the workload and again after it, because
    the machine's speed drifts; the cores' limit uses their mean.
    """

    loops: int
    cores: int
    per_call_ms_before: float
    per_call_ms_after: float | None = None

    @property
    def per_call_ms(self) -> float:
        """Return the mean of the before and after times that exist."""
        if self.per_call_ms_after is None:
            return self.per_call_ms_before
        return (self.per_call_ms_before + self.per_call_ms_after) / 2

    @property
    def core_limit_rps(self) -> float:
        """Return the cores' limit: usable cores / CPU time of one call."""
        return min(NUM_WORKERS, self.cores) * 1000.0 / self.per_call_ms

    def time_again(self) -> None:
        """Measure the CPU time of one call again, as `per_call_ms_after`."""
        self.per_call_ms_after = median_call_ms(self.loops)


@dataclass
class Settings:
    """Options that apply to every case; durations are in whole seconds."""

    duration: int
    warmup: int
    repeats: int
    startup_timeout: float
    idle_wait: float
    log_dir: Path


@dataclass
class CaseResult:
    """Outcome of one workload against one server."""

    server: str
    label: str
    stand_in: bool
    runs: list[WrkResult] = field(default_factory=list)
    error: str | None = None
    # Cores' worth of CPU used by programs other than wrk and the server:
    # in the last second before the case's first server started, and
    # during each measured run.
    other_cores_before: float | None = None
    other_cores: list[float] = field(default_factory=list)
    # CPU workload only: the cores' limit measured before each measured run
    # and after the last one, while no server runs (see run_case and
    # parallel_calls_per_second).
    core_limits: list[float] = field(default_factory=list)

    @property
    def core_limit_rps(self) -> float | None:
        """Return the mean of `core_limits`, or None when none was measured."""
        return statistics.mean(self.core_limits) if self.core_limits else None

    @property
    def core_fractions(self) -> list[float]:
        """Return each run's req/s over the mean of the limits on either side.

        The machine's speed drifts within a case, so each run is compared
        with the limits measured just before and just after it.
        """
        limits = self.core_limits
        fractions = []
        for index, run in enumerate(self.runs):
            around = limits[index : index + 2]
            if run.requests_per_sec is None or not around:
                continue
            fractions.append(run.requests_per_sec / statistics.mean(around))
        return fractions

    @property
    def median_core_fraction(self) -> float | None:
        """Return the median of `core_fractions`, or None without limits."""
        fractions = self.core_fractions
        return statistics.median(fractions) if fractions else None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.runs)

    def median(self, attribute: str) -> float | None:
        values = [getattr(run, attribute) for run in self.runs]
        values = [value for value in values if value is not None]
        return statistics.median(values) if values else None

    @property
    def failed_responses(self) -> int:
        """Return non-2xx responses plus socket errors over all runs."""
        return sum(run.non_2xx + run.socket_errors for run in self.runs)

    def to_dict(self) -> dict:
        return {
            "server": self.server,
            "label": self.label,
            "stand_in": self.stand_in,
            "error": self.error,
            "median_requests_per_sec": self.median("requests_per_sec"),
            "median_p50_us": self.median("p50_us"),
            "median_p99_us": self.median("p99_us"),
            "failed_responses": self.failed_responses,
            "other_cores_before": self.other_cores_before,
            "other_cores": self.other_cores,
            "core_limits_rps": self.core_limits,
            "core_fractions": self.core_fractions,
            "median_core_fraction": self.median_core_fraction,
            "runs": [run.to_dict() for run in self.runs],
        }


def _cpu_seconds(loops: int) -> float:
    """Return the CPU time of one `burn(loops)` call in this thread."""
    started = time.thread_time()
    burn(loops)
    return time.thread_time() - started


def median_call_ms(loops: int, calls: int = 40) -> float:
    """Return the median CPU time of `calls` calls of `burn(loops)`, in ms."""
    return statistics.median(_cpu_seconds(loops) for _ in range(calls)) * 1000.0


# Seconds that each measurement of the cores' limit runs.
CORE_LIMIT_SECONDS = 3.0


def _count_calls(loops: int, seconds: float, start, results) -> None:
    """Call `burn(loops)` back to back for `seconds` once `start` is set."""
    start.wait()
    began = time.monotonic()
    calls = 0
    while time.monotonic() - began < seconds:
        burn(loops)
        calls += 1
    results.put(calls / (time.monotonic() - began))


def parallel_calls_per_second(loops: int, processes: int,
                              seconds: float = CORE_LIMIT_SECONDS) -> float:
    """Return the calls per second of `processes` processes that only call `burn`.

    This is the cores' limit of the CPU workload: what a server's workers
    would reach if they spent every cycle in the handler. It is measured
    before and after each of a server's runs because the VM's speed drifts
    by up to a sixth between minutes.
    """
    context = multiprocessing.get_context("fork")
    start = context.Event()
    results = context.Queue()
    children = [
        context.Process(target=_count_calls, args=(loops, seconds, start, results))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    start.set()
    try:
        rates = [results.get(timeout=seconds + 30) for _ in children]
    finally:
        for child in children:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
                child.join()
    return sum(rates)


def calibrate(target_ms: float) -> Calibration:
    """Find the loop count for which one `burn` call takes `target_ms` of CPU.

    CPU time rather than wall-clock time, so that other programs competing
    for the cores do not shorten the loop count or the time per call.
    """
    loops = 1_000
    while (elapsed := _cpu_seconds(loops)) < 0.05:
        loops *= 2

    # The first calls of a fresh process ran up to twice as slow in trials on
    # a 2-core VM, so refine the estimate from the median of a few calls.
    for _ in range(3):
        loops = max(1, round(loops * target_ms / 1000.0 / elapsed))
        elapsed = statistics.median(_cpu_seconds(loops) for _ in range(5))

    return Calibration(
        loops=loops,
        cores=len(os.sched_getaffinity(0)),
        per_call_ms_before=median_call_ms(loops),
    )


def build_workload(key: str, cpu_loops: int) -> Workload:
    """Return the workload named `key`; `cpu_loops` sets the CPU handler's work."""
    workloads = [
        Workload(
            key="hello",
            number=1,
            title="JSON hello, keep-alive, wrk -t1 -c32",
            kind="throughput",
            method="GET",
            path="/hello",
            connections=32,
            servers=("workgate", "uhttp-workers", "uvicorn", "gunicorn", "nginx"),
            expected={"hello": "world"},
        ),
        Workload(
            key="upload",
            number=2,
            title="1 MiB POST, SHA-256 of the body, wrk -t1 -c8",
            kind="throughput",
            method="POST",
            path="/sha256",
            connections=8,
            servers=("workgate", "uhttp-workers", "uvicorn", "gunicorn"),
            expected={"sha256": hashlib.sha256(UPLOAD_BODY).hexdigest()},
            body=UPLOAD_BODY,
            script=UPLOAD_SCRIPT,
        ),
        Workload(
            key="cpu",
            number=3,
            title="CPU-bound handler (~5 ms), wrk -t1 -c8",
            kind="cpu",
            method="GET",
            path="/cpu",
            connections=8,
            servers=("workgate", "uhttp-workers", "gunicorn"),
            expected={"result": burn(cpu_loops)},
        ),
        Workload(
            key="latency",
            number=4,
            title="JSON hello latency, wrk -t1 -c1 --latency",
            kind="latency",
            method="GET",
            path="/hello",
            connections=1,
            servers=("workgate", "uvicorn"),
            expected={"hello": "world"},
            latency=True,
        ),
        # Workload 5, SSE fan-out, needs its own client rather than wrk: see
        # bench/fanout.py, which `make -C bench` runs after these.
    ]
    return next(workload for workload in workloads if workload.key == key)


def check_response(workload: Workload, port: int) -> None:
    """Send the workload's request once; raise RuntimeError on an unexpected response."""
    headers = {}
    if workload.body is not None:
        headers["Content-Type"] = "application/octet-stream"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(workload.method, workload.path, body=workload.body, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()

    if response.status != 200:
        raise RuntimeError(
            f"{workload.method} {workload.path} returned status {response.status}: {raw[:200]!r}"
        )
    try:
        decoded = json.loads(raw)
    except ValueError as err:
        raise RuntimeError(
            f"{workload.method} {workload.path} returned invalid JSON ({err}): {raw[:200]!r}"
        ) from err
    if decoded != workload.expected:
        raise RuntimeError(
            f"{workload.method} {workload.path} returned {decoded!r}, "
            f"expected {workload.expected!r}"
        )


def _measure(
    workload: Workload,
    port: int,
    settings: Settings,
    server_pid: int,
    result: CaseResult,
    repeats: int,
) -> None:
    """Warm up, then add `repeats` measured wrk runs to `result`."""
    url = f"http://127.0.0.1:{port}{workload.path}"

    def run(duration: int) -> WrkResult:
        return run_wrk(
            url,
            threads=1,
            connections=workload.connections,
            duration=duration,
            script=workload.script,
            latency=workload.latency,
        )

    if settings.warmup > 0:
        run(settings.warmup)
    for _ in range(repeats):
        other_load = OtherLoad(server_pid)
        result.runs.append(run(settings.duration))
        result.other_cores.append(other_load.cores())


_CASE_ERRORS = (
    RuntimeError,
    ValueError,
    OSError,
    http.client.HTTPException,
    subprocess.SubprocessError,
)


def run_case(
    workload: Workload, spec: ServerSpec, settings: Settings, cpu_loops: int
) -> CaseResult:
    """Measure `workload` against the server `spec`; errors go into the result."""
    result = CaseResult(server=spec.key, label=spec.label, stand_in=spec.stand_in)
    log_path = settings.log_dir / f"{workload.key}-{spec.key}.log"
    result.other_cores_before = wait_until_idle(DISTURBED_CORES, settings.idle_wait)
    if workload.kind != "cpu":
        _run_server(workload, spec, settings, cpu_loops, result, log_path, settings.repeats)
        return result

    # The CPU workload compares each run with the cores' limit measured just
    # before and just after it, so the server runs once per measured run.
    # No server runs while the limit is measured, because an idle server
    # can still use CPU (uhttp-workers 1.8.1 used 0.6 to 1.5 cores in a trial).
    processes = min(NUM_WORKERS, len(os.sched_getaffinity(0)))
    for number in range(1, settings.repeats + 1):
        result.core_limits.append(parallel_calls_per_second(cpu_loops, processes))
        run_log = log_path.with_name(f"{workload.key}-{spec.key}-run{number}.log")
        _run_server(workload, spec, settings, cpu_loops, result, run_log, 1)
        if result.error is not None:
            break
    if result.runs:
        result.core_limits.append(parallel_calls_per_second(cpu_loops, processes))
    return result


def _run_server(
    workload: Workload,
    spec: ServerSpec,
    settings: Settings,
    cpu_loops: int,
    result: CaseResult,
    log_path: Path,
    repeats: int,
) -> None:
    """Start the server, check it, add `repeats` measured runs, and stop it."""
    port = free_port()

    with tempfile.TemporaryDirectory(prefix="workgate-bench-") as scratch:
        try:
            server = ServerProcess(
                spec.argv(port, Path(scratch)),
                cwd=APPS_DIR,
                env=server_env(spec, cpu_loops),
                log_path=log_path,
            )
        except OSError as err:
            result.error = f"could not start {spec.key}: {err}"
            return

        try:
            server.wait_ready(port, "/hello", settings.startup_timeout)
            check_response(workload, port)
            _measure(workload, port, settings, server.pid, result, repeats)
        except _CASE_ERRORS as err:
            result.error = f"{err} (server log: {log_path})"
        finally:
            server.stop()
