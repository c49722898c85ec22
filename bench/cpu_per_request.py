"""CPU time per request of each server's processes, under wrk load.

Throughput depends on how the scheduler shares two cores between wrk, a
dispatcher and its workers. CPU time per request depends much less on it,
so this script shows where workgate's time goes and compares it with
uvicorn's single process:

    bench/.venv/bin/python bench/cpu_per_request.py
    bench/.venv/bin/python bench/cpu_per_request.py --workloads hello --seconds 5

For each workload and server it starts the server, warms it up for 2 s,
then reads the CPU ticks (user + system, from /proc) of the server's root
process and of its descendants before and after one wrk run. The root is
workgate's dispatcher (its descendants are the workers and the fork
server) and uvicorn's only process. A tick is 1/SC_CLK_TCK seconds (10 ms
here), so a 10 s run counts hundreds of ticks per process. Only loopback
is used, and every run is bounded by --seconds.

Run it with the benchmark's virtual environment, which `make -C bench`
creates.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.process import ServerProcess, descendants, free_port, read_stat  # noqa: E402
from harness.workloads import build_workload, check_response  # noqa: E402
from harness.wrk import run_wrk  # noqa: E402

from harness import servers  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SERVERS = ("workgate", "uvicorn")
WARMUP_SECONDS = 2


def tree_ticks(root_pid: int) -> tuple[int, int]:
    """Return the CPU ticks of `root_pid` and the sum over its live descendants."""
    root = read_stat(root_pid)
    children = sum(stat.cpu_ticks for stat in descendants(root_pid).values())
    return (root.cpu_ticks if root is not None else 0), children


def measure(workload_key: str, server_key: str, seconds: int, log_dir: Path) -> dict:
    """Run one workload against one server; return req/s and CPU µs per request."""
    workload = build_workload(workload_key, cpu_loops=0)
    spec = servers.ALL_SERVERS[server_key]
    port = free_port()
    url = f"http://127.0.0.1:{port}{workload.path}"
    with tempfile.TemporaryDirectory(prefix="workgate-cpu-") as scratch:
        server = ServerProcess(
            spec.argv(port, Path(scratch)),
            cwd=servers.APPS_DIR,
            env=servers.server_env(spec, 0),
            log_path=log_dir / f"cpu-{workload_key}-{server_key}.log",
        )
        try:
            server.wait_ready(port, "/hello", 30)
            check_response(workload, port)
            run_wrk(url, 1, workload.connections, WARMUP_SECONDS, workload.script)
            root_before, children_before = tree_ticks(server.pid)
            result = run_wrk(url, 1, workload.connections, seconds, workload.script)
            root_after, children_after = tree_ticks(server.pid)
        finally:
            server.stop()

    def per_request(ticks: int) -> float:
        return ticks / CLOCK_TICKS / result.requests * 1e6

    return {
        "rps": result.requests_per_sec,
        "root_us": per_request(root_after - root_before),
        "children_us": per_request(children_after - children_before),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="hello,upload",
                        help="comma-separated workloads: hello, upload (default: both)")
    parser.add_argument("--seconds", type=int, default=10,
                        help="seconds of each measured wrk run (default: 10)")
    args = parser.parse_args()
    log_dir = Path(__file__).resolve().parent / "results" / "logs"

    print(f"{'workload':9} {'server':9} {'req/s':>9} {'root µs':>8} {'children µs':>11} "
          f"{'total µs':>8}")
    for workload_key in args.workloads.split(","):
        totals = {}
        roots = {}
        for server_key in SERVERS:
            figures = measure(workload_key, server_key, args.seconds, log_dir)
            total = figures["root_us"] + figures["children_us"]
            totals[server_key] = total
            roots[server_key] = figures["root_us"]
            print(f"{workload_key:9} {server_key:9} {figures['rps']:9,.0f} "
                  f"{figures['root_us']:8.1f} {figures['children_us']:11.1f} "
                  f"{total:8.1f}", flush=True)
        print(f"{workload_key:9} workgate / uvicorn: dispatcher "
              f"{roots['workgate'] / roots['uvicorn']:.2f}, all processes "
              f"{totals['workgate'] / totals['uvicorn']:.2f}")


if __name__ == "__main__":
    main()
