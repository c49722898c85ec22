"""Benchmark app for the worker-pool servers: workgate and uhttp-workers.

Both packages expose the same API, so one source serves both. The
BENCH_WORKERS_MODULE environment variable names the module to import:
`workgate` or `uhttp.workers`. It is read at import time, so worker
processes started by spawn or forkserver import the same package as the
dispatcher. Routes:

    GET  /hello   {"hello": "world"}
    POST /sha256  {"sha256": "<hex digest of the request body>"}
    GET  /cpu     {"result": <burn(BENCH_CPU_LOOPS)>}
"""

import hashlib
import importlib
import os

from cpu_work import burn, loops_from_env

WORKERS_MODULE = os.environ.get("BENCH_WORKERS_MODULE", "workgate")
_workers = importlib.import_module(WORKERS_MODULE)

# uhttp-server rejects bodies over 512 KiB by default; the upload workload
# posts 1 MiB, so both servers get the same explicit limit.
MAX_CONTENT_LENGTH = 2 * 1024 * 1024

# No server in the benchmark writes an access log: uvicorn runs with
# --no-access-log, gunicorn and uhttp-workers write none by default, and
# nginx has `access_log off`. workgate writes one unless access_log=False.
# uhttp-workers hands that keyword to uhttp-server 2.6.2, which ignores it.
ACCESS_LOG = False


class BenchWorker(_workers.Worker):
    def setup(self):
        self.cpu_loops = loops_from_env()

    @_workers.api("/hello", "GET")
    def hello(self, request):
        return {"hello": "world"}

    @_workers.api("/sha256", "POST")
    def sha256(self, request):
        return {"sha256": hashlib.sha256(request.data).hexdigest()}

    @_workers.api("/cpu", "GET")
    def cpu(self, request):
        return {"result": burn(self.cpu_loops)}


def build_dispatcher(port: int, num_workers: int):
    """Build a dispatcher on 127.0.0.1:`port` with one fallback pool."""
    pool = _workers.WorkerPool(BenchWorker, num_workers=num_workers)
    return _workers.Dispatcher(
        port=port,
        address="127.0.0.1",
        pools=[pool],
        shutdown_timeout=2,
        log_level=_workers.LOG_WARNING,
        max_content_length=MAX_CONTENT_LENGTH,
        access_log=ACCESS_LOG,
    )
