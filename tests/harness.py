"""Run a real workgate dispatcher in a child process for integration tests.

``Server('tests.apps.core_app:make')`` starts ``python -m workgate run`` on an
ephemeral loopback port, reads the bound port from the "listening on" log
line, and keeps every line the process prints so a test can wait for one
(``wait_log``) instead of sleeping. Worker pids are taken from the "ready"
log lines so a test can check that none outlives the dispatcher.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0

_LISTEN_RE = re.compile(r'listening on (\S+):(\d+)')
_READY_RE = re.compile(r'worker (\S+) pid (\d+) ready')


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        with open(f'/proc/{pid}/stat') as stat:
            state = stat.read().rsplit(')', 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != 'Z'


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class Server:
    """A dispatcher process started through the command line."""

    def __init__(self, target: str, *args: str, env: dict | None = None,
                 host: str = '127.0.0.1'):
        self.target = target
        self.args = list(args)
        self.host = host
        self.env = dict(os.environ)
        self.env['PYTHONPATH'] = os.pathsep.join(
            [str(REPO / 'src'), str(REPO), self.env.get('PYTHONPATH', '')])
        self.env['PYTHONUNBUFFERED'] = '1'
        self.env.pop('JOURNAL_STREAM', None)
        if env:
            self.env.update(env)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.worker_pids: set[int] = set()

    # -- lifecycle ----------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> Server:
        command = [sys.executable, '-m', 'workgate', 'run', self.target,
                   '--host', self.host, '--port', '0', *self.args]
        self.process = subprocess.Popen(
            command, cwd=str(REPO), env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1)
        threading.Thread(target=self._read_output, daemon=True).start()
        match = self.wait_log(_LISTEN_RE, timeout)
        if match is None:
            self.kill()
            raise RuntimeError('server did not start:\n' + self.output())
        self.port = int(match.group(2))
        return self

    def _read_output(self) -> None:
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip('\n'))
                ready = _READY_RE.search(line)
                if ready:
                    self.worker_pids.add(int(ready.group(2)))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_ready(self, count: int, timeout: float = START_TIMEOUT) -> None:
        """Wait until ``count`` "worker ... ready" lines were printed in total."""
        if not self.wait_for(lambda: len(self.ready_lines()) >= count, timeout):
            raise AssertionError(f'{count} workers not ready:\n' + self.output())

    def ready_lines(self) -> list[str]:
        return [line for line in list(self.lines) if _READY_RE.search(line)]

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.1))
        return True

    def wait_log(self, pattern, timeout: float = 10.0, start: int = 0):
        """Return the first match of ``pattern`` in lines[start:], waiting for it."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        found = []

        def search() -> bool:
            for line in self.lines[start:]:
                match = regex.search(line)
                if match:
                    found.append(match)
                    return True
            return self.process.poll() is not None and not found

        self.wait_for(search, timeout)
        return found[0] if found else None

    def count_log(self, pattern) -> int:
        regex = re.compile(pattern)
        return sum(1 for line in list(self.lines) if regex.search(line))

    def output(self) -> str:
        return '\n'.join(self.lines)

    def url(self, path: str = '/') -> str:
        host = f'[{self.host}]' if ':' in self.host else self.host
        return f'http://{host}:{self.port}{path}'

    def terminate(self, timeout: float = 30.0) -> int:
        """Send SIGTERM and return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                'dispatcher did not exit after SIGTERM:\n' + self.output()) from None

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for pid in self.worker_pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def live_workers(self) -> list[int]:
        return [pid for pid in self.worker_pids if pid_alive(pid)]

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


def read_events(path: Path) -> list[dict]:
    """Read the JSON-lines event log a test app writes."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
