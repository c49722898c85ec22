#!/usr/bin/env python3
"""Benchmark workgate against its anchors in one run and print ratios.

Usage: python3 bench/run.py [options]   (or: make -C bench ARGS="...")

The first stage runs under any Python 3.11+: it installs wrk with apt-get
when it is missing, creates bench/.venv with workgate (editable, from the
repository root) and the anchor servers, then re-runs this script with the
venv's interpreter. The second stage measures every workload against every
server, prints a Markdown table and writes bench/results/latest.json.
Every option can also be set with an environment variable (BENCH_DURATION
for --duration, and so on).
"""

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness.session import TimeLimitReached, measure, raise_time_limit

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
VENV_DIR = BENCH_DIR / ".venv"
VENV_PYTHON = VENV_DIR / "bin" / "python"
INSTALL_STAMP = VENV_DIR / ".bench-installed"
RESULTS_DIR = BENCH_DIR / "results"

# uhttp-workers 1.8.1 fails on uhttp-server 3.2.0 (its dispatcher loop reads
# HttpServer.read_sockets, which 3.2.0 no longer has), so pin the 2.x series.
ANCHOR_REQUIREMENTS = [
    "uhttp-workers==1.8.1",
    "uhttp-server<3",
    "uvicorn",
    "uvloop",
    "httptools",
    "gunicorn",
]
WORKLOAD_KEYS = ("hello", "upload", "cpu", "latency")
SERVER_KEYS = ("workgate", "uhttp-workers", "uvicorn", "gunicorn", "nginx")
INSTALL_TIMEOUT = 900


def _env_default(name: str, default: str) -> str:
    """Return BENCH_`name` from the environment, or `default`.

    argparse converts a string default with the option's `type`, so an
    invalid value in the environment is reported like one on the command line.
    """
    return os.environ.get(f"BENCH_{name}", default)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark workgate against uhttp-workers, uvicorn, "
        "gunicorn and nginx on 127.0.0.1."
    )
    parser.add_argument(
        "--duration",
        type=int,
        default=_env_default("DURATION", "10"),
        help="seconds of each measured wrk run (default 10, env BENCH_DURATION)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=_env_default("WARMUP", "2"),
        help="seconds of unmeasured load before the runs (default 2, env BENCH_WARMUP)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=_env_default("REPEATS", "3"),
        help="measured runs per case; the table shows their median (default 3, env BENCH_REPEATS)",
    )
    parser.add_argument(
        "--only",
        default=_env_default("ONLY", ""),
        help="comma-separated workloads to run: hello, upload, cpu, latency, or "
        "workload1..workload4 (default all, env BENCH_ONLY)",
    )
    parser.add_argument(
        "--servers",
        default=_env_default("SERVERS", ""),
        help="comma-separated servers to run: workgate, uhttp-workers, uvicorn, "
        "gunicorn, nginx (default all, env BENCH_SERVERS)",
    )
    parser.add_argument(
        "--stand-in",
        action="store_true",
        default=_env_default("STAND_IN", "") == "1",
        help="when workgate does not import, run uhttp-workers in its rows, "
        "labelled as a stand-in (env BENCH_STAND_IN=1)",
    )
    parser.add_argument(
        "--cpu-ms",
        type=float,
        default=_env_default("CPU_MS", "5"),
        help="target milliseconds of CPU time of one CPU-bound handler call "
        "(default 5, env BENCH_CPU_MS)",
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=_env_default("STARTUP_TIMEOUT", "30"),
        help="seconds a server may take to return 200 for GET /hello after its start "
        "(default 30, env BENCH_STARTUP_TIMEOUT)",
    )
    parser.add_argument(
        "--idle-wait",
        type=float,
        default=_env_default("IDLE_WAIT", "15"),
        help="seconds to wait before each case for other programs to use less "
        "than a quarter of a core (default 15, 0 does not wait; env BENCH_IDLE_WAIT)",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=_env_default("TIME_LIMIT", "1800"),
        help="seconds the whole command may take, installation included; "
        "servers are stopped when it runs out (default 1800, env BENCH_TIME_LIMIT)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=_env_default("OUTPUT", str(RESULTS_DIR / "latest.json")),
        help="JSON results file (default bench/results/latest.json, env BENCH_OUTPUT)",
    )
    # Set by the first stage for the second: the wall-clock time (Unix
    # epoch seconds) at which --time-limit runs out.
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    # wrk takes whole seconds only.
    if args.duration < 1 or args.warmup < 0 or args.repeats < 1:
        parser.error("--duration and --repeats must be at least 1, --warmup at least 0")
    if args.time_limit <= 0:
        parser.error(f"--time-limit must be positive, got {args.time_limit:g}")
    args.only_keys = _parse_only(parser, args.only)
    args.server_keys = _parse_list(args.servers)
    for key in args.server_keys:
        if key not in SERVER_KEYS:
            parser.error(
                f"unknown server {key!r} in --servers; expected one of {', '.join(SERVER_KEYS)}"
            )
    return args


def _parse_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _parse_only(parser: argparse.ArgumentParser, text: str) -> list[str]:
    keys = []
    for item in _parse_list(text):
        number = item.removeprefix("workload")
        if number.isdigit() and 1 <= int(number) <= len(WORKLOAD_KEYS):
            keys.append(WORKLOAD_KEYS[int(number) - 1])
        elif item in WORKLOAD_KEYS:
            keys.append(item)
        else:
            parser.error(
                f"unknown workload {item!r} in --only; expected one of "
                f"{', '.join(WORKLOAD_KEYS)} or workload1..workload4"
            )
    # Run order is fixed, whatever the order on the command line.
    return [key for key in WORKLOAD_KEYS if key in keys] if keys else list(WORKLOAD_KEYS)


# First stage: tools and virtual environment.


def ensure_wrk() -> None:
    """Install wrk with apt-get when it is not on PATH."""
    if shutil.which("wrk") is not None:
        return
    if os.geteuid() != 0:
        raise SystemExit(
            "wrk is not on PATH and this user cannot run apt-get; "
            "install it (for example `sudo apt-get install -y wrk`) and rerun."
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]):
        print(f"wrk is not on PATH; running: {' '.join(command)}", flush=True)
        subprocess.run(command, env=env, check=True, timeout=INSTALL_TIMEOUT)


def _install_fingerprint() -> str:
    """Return a digest of what the venv must contain, for the install stamp."""
    digest = hashlib.sha256()
    digest.update("\n".join(ANCHOR_REQUIREMENTS).encode())
    digest.update((REPO_DIR / "pyproject.toml").read_bytes())
    return digest.hexdigest()


def ensure_venv() -> None:
    """Create bench/.venv and install workgate and the anchors when needed."""
    if not VENV_PYTHON.exists():
        print(f"creating {VENV_DIR}", flush=True)
        subprocess.run(
            [sys.executable, "-m", "venv", str(VENV_DIR)],
            check=True,
            timeout=INSTALL_TIMEOUT,
        )

    fingerprint = _install_fingerprint()
    if INSTALL_STAMP.exists() and INSTALL_STAMP.read_text() == fingerprint:
        return

    pip = [str(VENV_PYTHON), "-m", "pip", "install", "--quiet"]
    print(f"installing into {VENV_DIR}: {', '.join(ANCHOR_REQUIREMENTS)}", flush=True)
    subprocess.run(pip + ANCHOR_REQUIREMENTS, check=True, timeout=INSTALL_TIMEOUT)

    print(f"installing workgate in editable mode from {REPO_DIR}", flush=True)
    completed = subprocess.run(pip + ["-e", str(REPO_DIR)], check=False, timeout=INSTALL_TIMEOUT)
    if completed.returncode != 0:
        # The anchors still run; the workgate rows report the failure, and
        # the next run retries because no stamp is written.
        print(
            f"warning: editable install of workgate failed with exit code {completed.returncode}",
            flush=True,
        )
        return
    INSTALL_STAMP.write_text(fingerprint)


def bootstrap(args: argparse.Namespace, argv: list[str]) -> None:
    """Prepare wrk and the venv, then re-run this script inside the venv."""
    deadline = time.time() + args.time_limit
    signal.signal(signal.SIGALRM, raise_time_limit)
    signal.alarm(max(1, int(args.time_limit)))
    try:
        ensure_wrk()
        ensure_venv()
    except TimeLimitReached:
        raise SystemExit(f"time limit of {args.time_limit:g} s reached while installing") from None
    except subprocess.CalledProcessError as err:
        raise SystemExit(
            f"installation step failed with exit code {err.returncode}: "
            f"{' '.join(map(str, err.cmd))}"
        ) from None
    signal.alarm(0)

    command = [str(VENV_PYTHON), str(Path(__file__).resolve())]
    command += argv + ["--deadline", str(deadline)]
    sys.stdout.flush()
    os.execv(command[0], command)


def main() -> int:
    argv = sys.argv[1:]
    args = parse_args(argv)
    if Path(sys.prefix).resolve() != VENV_DIR.resolve():
        bootstrap(args, argv)
    return measure(args, log_dir=RESULTS_DIR / "logs")


if __name__ == "__main__":
    sys.exit(main())
