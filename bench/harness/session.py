"""The measuring stage of run.py: every selected case, then the report.

It runs inside bench/.venv, so the servers it starts and the CPU
calibration use the same interpreter.
"""

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from harness import servers
from harness.cpuload import DISTURBED_CORES, wait_until_idle
from harness.process import stop_all_servers
from harness.report import Row, compare, markdown_table
from harness.workloads import (
    Calibration,
    CaseResult,
    Settings,
    Workload,
    build_workload,
    calibrate,
    run_case,
)

REPORTED_PACKAGES = [
    "workgate",
    "uhttp-workers",
    "uhttp-server",
    "uvicorn",
    "uvloop",
    "httptools",
    "gunicorn",
]


class TimeLimitReached(Exception):
    """The overall time limit (--time-limit) ran out."""


def raise_time_limit(signum, frame):
    """SIGALRM handler: raise TimeLimitReached."""
    raise TimeLimitReached()


@dataclass
class ServerChoice:
    """Server spec to start for each key, and the skipped servers with the reason."""

    specs: dict[str, servers.ServerSpec]
    skipped: dict[str, str] = field(default_factory=dict)
    workgate_error: str | None = None
    stand_in: bool = False


@dataclass
class Outcome:
    """Everything measured so far, also after an early stop."""

    calibration: Calibration | None = None
    rows: list[Row] = field(default_factory=list)
    workloads: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    incomplete: str | None = None


def machine_info() -> dict:
    """Return core count, CPU model, Python version and platform."""
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _tool_version(argv: list[str]) -> str | None:
    try:
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    output = (completed.stdout + completed.stderr).strip()
    return output.splitlines()[0] if output else None


def versions() -> dict:
    """Return the versions of the packages and tools under test."""
    found = {}
    for package in REPORTED_PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    # The editable install runs the working tree, so record its commit and
    # whether it had uncommitted changes.
    found["workgate_tree"] = _tool_version(
        ["git", "-C", str(servers.BENCH_DIR.parent), "describe", "--always", "--dirty"]
    )
    found["wrk"] = _tool_version(["wrk", "-v"])
    found["nginx"] = _tool_version(["nginx", "-v"]) if shutil.which("nginx") else None
    return found


def choose_servers(stand_in: bool) -> ServerChoice:
    """Check workgate and nginx, and substitute or skip what cannot run."""
    choice = ServerChoice(specs=dict(servers.ALL_SERVERS))

    choice.workgate_error = servers.check_workgate()
    if choice.workgate_error is not None:
        if stand_in:
            print(
                f"workgate does not import ({choice.workgate_error}); "
                "uhttp-workers stands in for it"
            )
            choice.specs["workgate"] = servers.WORKGATE_STAND_IN
            choice.stand_in = True
        else:
            print(f"workgate does not import: {choice.workgate_error}")

    nginx_error = servers.check_nginx()
    if nginx_error is not None:
        choice.skipped["nginx"] = nginx_error
        print(f"skipping nginx: {nginx_error}")
    return choice


def _run_one(
    key: str, workload: Workload, choice: ServerChoice, settings: Settings, cpu_loops: int
) -> CaseResult:
    spec = choice.specs[key]
    if key == "workgate" and choice.workgate_error and not choice.stand_in:
        return CaseResult(
            server=key,
            label=spec.label,
            stand_in=False,
            error=f"workgate does not import: {choice.workgate_error}",
        )
    return run_case(workload, spec, settings, cpu_loops)


def _calibrate(args: argparse.Namespace) -> Calibration:
    wait_until_idle(DISTURBED_CORES, args.idle_wait)
    calibration = calibrate(args.cpu_ms)
    print(
        f"CPU calibration: {calibration.loops} loops take "
        f"{calibration.per_call_ms_before:.2f} ms of CPU per call"
    )
    return calibration


def _time_again(calibration: Calibration) -> None:
    calibration.time_again()
    print(
        f"CPU time per call after the workload: {calibration.per_call_ms_after:.2f} ms; "
        f"limit from one process's CPU time per call: {calibration.core_limit_rps:,.0f} req/s "
        f"(each row uses the limits measured around its runs)"
    )


def _run_servers(
    workload: Workload,
    args: argparse.Namespace,
    choice: ServerChoice,
    settings: Settings,
    outcome: Outcome,
) -> list[CaseResult]:
    """Measure `workload` against each selected server, in the workload's order."""
    cpu_loops = outcome.calibration.loops if outcome.calibration else 0
    cases = []
    for server_key in workload.servers:
        if args.server_keys and server_key not in args.server_keys:
            continue
        if server_key in choice.skipped:
            continue

        print(f"  {choice.specs[server_key].label} ...", end=" ", flush=True)
        case = _run_one(server_key, workload, choice, settings, cpu_loops)
        cases.append(case)
        if case.ok:
            other = max(case.other_cores, default=0.0)
            limit = ""
            if case.core_limit_rps:
                limit = f", cores' limit {case.core_limit_rps:,.0f} req/s"
            print(
                f"{case.median('requests_per_sec'):,.0f} req/s "
                f"(other programs used up to {other:.2f} cores{limit})"
            )
        else:
            print("failed")
            outcome.failures.append(f"{workload.key} / {case.label}: {case.error}")
    return cases


def run_workloads(
    args: argparse.Namespace,
    choice: ServerChoice,
    settings: Settings,
    outcome: Outcome,
) -> None:
    """Measure every selected case, adding rows and figures to `outcome`."""
    for workload_key in args.only_keys:
        # Calibrate just before the CPU workload and time the calls again
        # after it, so that the cores' limit reflects the machine's speed
        # while that workload runs.
        if workload_key == "cpu":
            outcome.calibration = _calibrate(args)
        cpu_loops = outcome.calibration.loops if outcome.calibration else 0
        workload = build_workload(workload_key, cpu_loops)

        print(f"\nworkload {workload.number} ({workload.key}): {workload.title}")
        cases = _run_servers(workload, args, choice, settings, outcome)
        if workload_key == "cpu":
            _time_again(outcome.calibration)

        rows, ratios = compare(workload, cases, outcome.calibration)
        outcome.rows += rows
        outcome.workloads.append(
            {
                "key": workload.key,
                "number": workload.number,
                "title": workload.title,
                "cases": [case.to_dict() for case in cases],
                "ratios": ratios,
            }
        )


def _calibration_dict(calibration: Calibration | None) -> dict | None:
    if calibration is None:
        return None
    return {
        "loops": calibration.loops,
        "per_call_ms_before": calibration.per_call_ms_before,
        "per_call_ms_after": calibration.per_call_ms_after,
        "per_call_ms": calibration.per_call_ms,
        "cores": calibration.cores,
        "core_limit_rps": calibration.core_limit_rps,
    }


def _command_line(argv: list[str]) -> str:
    """Return the user's command line, without the internal --deadline."""
    if "--deadline" in argv:
        index = argv.index("--deadline")
        argv = argv[:index] + argv[index + 2 :]
    return " ".join(["run.py"] + argv)


def measure(args: argparse.Namespace, log_dir: Path) -> int:
    """Run the selected workloads, print and save the report; return exit status."""
    signal.signal(signal.SIGALRM, raise_time_limit)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.deadline is not None:
        signal.alarm(max(1, int(args.deadline - time.time())))

    machine = machine_info()
    print(f"machine: {machine['nproc']} cores, {machine['cpu_model']}, Python {machine['python']}")
    print(
        f"settings: {args.repeats} x {args.duration:g} s per case after {args.warmup:g} s warm-up"
    )
    choice = choose_servers(args.stand_in)
    settings = Settings(
        duration=args.duration,
        warmup=args.warmup,
        repeats=args.repeats,
        startup_timeout=args.startup_timeout,
        idle_wait=args.idle_wait,
        log_dir=log_dir,
    )

    outcome = Outcome()
    try:
        run_workloads(args, choice, settings, outcome)
    except TimeLimitReached:
        outcome.incomplete = f"time limit of {args.time_limit:g} s reached"
    except KeyboardInterrupt:
        outcome.incomplete = "interrupted"
    finally:
        stop_all_servers()
        signal.alarm(0)
    if outcome.incomplete:
        print(f"\nstopped early: {outcome.incomplete}")

    table = markdown_table(outcome.rows)
    print()
    print(table)
    if outcome.failures:
        print("\nfailed cases:")
        for failure in outcome.failures:
            print(f"- {failure}")

    document = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": _command_line(sys.argv[1:]),
        "machine": machine,
        "versions": versions(),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "repeats": args.repeats,
            "workers": servers.NUM_WORKERS,
        },
        "workgate_import_error": choice.workgate_error,
        "stand_in": choice.stand_in,
        "skipped": choice.skipped,
        "cpu_calibration": _calibration_dict(outcome.calibration),
        "incomplete": outcome.incomplete,
        "workloads": outcome.workloads,
        "table": table,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 1 if outcome.failures or outcome.incomplete else 0
