"""The servers under test and the command line that starts each one.

Every server listens on 127.0.0.1 on a port chosen by the harness. The
Python servers run from bench/.venv with bench/apps on PYTHONPATH; nginx
runs from PATH with a configuration written to a temporary directory.
"""

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
APPS_DIR = BENCH_DIR / "apps"

# Worker processes for every multi-process server (workgate, uhttp-workers,
# gunicorn). The cores' limit of the CPU workload counts min(workers, cores).
NUM_WORKERS = 2

WORKGATE_IMPORT_CHECK = "import workgate; workgate.Dispatcher, workgate.WorkerPool, workgate.Worker"

_NGINX_CONF = """\
daemon off;
master_process on;
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    keepalive_requests 1000000;

    server {{
        listen 127.0.0.1:{port};

        location = /hello {{
            default_type application/json;
            return 200 '{{"hello": "world"}}';
        }}
    }}
}}
"""


@dataclass
class ServerSpec:
    """How to start one server; `argv` receives the port and a scratch dir."""

    key: str
    label: str
    argv: Callable[[int, Path], list[str]]
    env: dict[str, str] = field(default_factory=dict)
    stand_in: bool = False


def _pool_argv(port: int, scratch: Path) -> list[str]:
    return [sys.executable, "run_pool.py", str(port), str(NUM_WORKERS)]


def _uvicorn_argv(port: int, scratch: Path) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "asgi_app:app",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--loop", "uvloop",
        "--http", "httptools",
        "--lifespan", "off",
        "--no-access-log",
        "--log-level", "warning",
    ]  # fmt: skip


def _gunicorn_argv(port: int, scratch: Path) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn",
        "--workers", str(NUM_WORKERS),
        "--worker-class", "sync",
        "--bind", f"127.0.0.1:{port}",
        "--log-level", "warning",
        "wsgi_app:app",
    ]  # fmt: skip


def _nginx_argv(port: int, scratch: Path) -> list[str]:
    conf = scratch / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(tmp=scratch, port=port, workers=NUM_WORKERS))
    return [
        "nginx",
        "-p", str(scratch),
        "-c", str(conf),
        "-e", str(scratch / "error.log"),
    ]  # fmt: skip


WORKGATE = ServerSpec(
    key="workgate",
    label=f"workgate, {NUM_WORKERS} workers",
    argv=_pool_argv,
    env={"BENCH_WORKERS_MODULE": "workgate"},
)
UHTTP_WORKERS = ServerSpec(
    key="uhttp-workers",
    label=f"uhttp-workers 1.8.1, {NUM_WORKERS} workers",
    argv=_pool_argv,
    env={"BENCH_WORKERS_MODULE": "uhttp.workers"},
)
UVICORN = ServerSpec(
    key="uvicorn",
    label="uvicorn + uvloop + httptools, 1 process",
    argv=_uvicorn_argv,
)
GUNICORN = ServerSpec(
    key="gunicorn",
    label=f"gunicorn, {NUM_WORKERS} sync workers",
    argv=_gunicorn_argv,
)
NGINX = ServerSpec(
    key="nginx",
    label="nginx `return 200`",
    argv=_nginx_argv,
)

ALL_SERVERS = {spec.key: spec for spec in (WORKGATE, UHTTP_WORKERS, UVICORN, GUNICORN, NGINX)}

# uhttp-workers running the workgate rows, for runs where workgate cannot
# start yet. Its rows are labelled as a stand-in everywhere they appear.
WORKGATE_STAND_IN = ServerSpec(
    key="workgate",
    label=f"uhttp-workers as stand-in for workgate, {NUM_WORKERS} workers",
    argv=_pool_argv,
    env={"BENCH_WORKERS_MODULE": "uhttp.workers"},
    stand_in=True,
)


def check_workgate() -> str | None:
    """Return None when workgate imports in this interpreter, else the error."""
    completed = subprocess.run(
        [sys.executable, "-c", WORKGATE_IMPORT_CHECK],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if completed.returncode == 0:
        return None
    lines = completed.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit code {completed.returncode}"


def check_nginx() -> str | None:
    """Return None when nginx is on PATH, else the reason it is skipped."""
    if shutil.which("nginx") is None:
        return "nginx is not on PATH (install it to get the upper-bound row)"
    return None


def server_env(spec: ServerSpec, cpu_loops: int) -> dict[str, str]:
    """Return the environment for `spec`: ours, plus the app settings."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(APPS_DIR)
    env["BENCH_CPU_LOOPS"] = str(cpu_loops)
    env.update(spec.env)
    return env
