"""Test application for supervision: crashes, stuck workers, restarts, flow control.

Settings come from environment variables (WG_*); hooks append JSON lines to
the file named by WG_EVENTS.
"""

import ctypes
import json
import os
import resource
import signal
import socket
import subprocess
import time

import workgate as _workers

EVENTS = os.environ.get('WG_EVENTS')


def record(kind, **fields):
    if EVENTS:
        with open(EVENTS, 'a') as events:
            events.write(json.dumps({'event': kind, 'pid': os.getpid(), **fields}) + '\n')


def env_float(name, default):
    value = os.environ.get(name)
    return float(value) if value else default


class SuperWorker(_workers.Worker):
    def setup(self):
        mode = os.environ.get('WG_SETUP')
        if mode == 'raise':
            raise RuntimeError('setup cannot start')
        if mode == 'park':
            raise SystemExit(42)
        if mode == 'park-one' and self.worker_id == 0:
            raise SystemExit(42)
        self.config = None
        self.idle_count = 0
        self.reader_hits = 0
        self.pipe_r, self.pipe_w = socket.socketpair()
        self.register_reader(self.pipe_r, self.on_pipe)
        record('setup', worker=self.worker_id)

    def teardown(self):
        record('teardown', worker=self.worker_id)

    def on_pipe(self, sock):
        sock.recv(100)
        self.reader_hits += 1

    def on_config(self, config):
        self.config = config

    def on_idle(self):
        self.idle_count += 1

    @_workers.api('/w/pid', 'GET')
    def pid(self, request):
        return {'pid': os.getpid(), 'worker': self.worker_id}

    @_workers.api('/w/sleep/{seconds:float}', 'GET')
    def sleep(self, request):
        time.sleep(request.path_params['seconds'])
        return {'worker': self.worker_id, 'pid': os.getpid()}

    @_workers.api('/w/ran/{tag}', 'GET')
    def ran(self, request):
        record('ran', tag=request.path_params['tag'])
        return {'ran': request.path_params['tag']}

    @_workers.api('/w/exit/{code:int}', 'GET')
    def exit(self, request):
        os._exit(request.path_params['code'])

    @_workers.api('/w/kill-self', 'GET')
    def kill_self(self, request):
        os.kill(os.getpid(), signal.SIGKILL)

    @_workers.api('/w/segv', 'GET')
    def segv(self, request):
        ctypes.string_at(0)

    @_workers.api('/w/spin', 'GET')
    def spin(self, request):
        child = subprocess.Popen(['sleep', '60'])
        record('child', child=child.pid)
        while True:
            pass

    @_workers.api('/w/keepalive/{seconds:float}', 'GET')
    def keepalive(self, request):
        end = time.monotonic() + request.path_params['seconds']
        while time.monotonic() < end:
            time.sleep(0.2)
            self.keep_alive()
        return {'done': True}

    @_workers.api('/w/memory', 'GET')
    def memory(self, request):
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        return {'soft': soft, 'hard': hard}

    @_workers.api('/w/allocate/{mb:int}', 'GET')
    def allocate(self, request):
        block = bytearray(request.path_params['mb'] * 1024 * 1024)
        return {'allocated': len(block)}

    @_workers.api('/w/pause', 'GET')
    def pause_route(self, request):
        self.pause()
        return {'paused': self.worker_id}

    @_workers.api('/w/resume-all', 'GET')
    def resume_route(self, request):
        return {'worker': self.worker_id}

    @_workers.api('/w/state', 'GET')
    def state(self, request):
        return {'worker': self.worker_id, 'config': self.config, 'idle': self.idle_count,
                'reader_hits': self.reader_hits}

    @_workers.api('/w/poke', 'GET')
    def poke(self, request):
        self.pipe_w.send(b'x')
        return {'poked': self.worker_id}

    @_workers.api('/w/forward/{count:int}', 'GET')
    def forward_route(self, request):
        for i in range(request.path_params['count']):
            self.forward('/sink/store', {'n': i})
        return {'forwarded': request.path_params['count']}

    def on_config_resume(self):
        self.resume()


class ResumableWorker(SuperWorker):
    def on_config(self, config):
        super().on_config(config)
        if config == 'resume':
            self.resume()


class SinkWorker(_workers.Worker):
    @_workers.api('/sink/store', 'POST')
    def store(self, request):
        time.sleep(env_float('WG_SINK_DELAY', 0))
        record('sink', data=request.data)
        return None


class SuperDispatcher(_workers.Dispatcher):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.idle_ticks = 0
        self.reader_hits = 0
        self.pipe_r, self.pipe_w = socket.socketpair()
        self.register_reader(self.pipe_r, self.on_pipe)

    def on_pipe(self, sock):
        sock.recv(100)
        self.reader_hits += 1

    def on_idle(self):
        self.idle_ticks += 1

    def on_worker_died(self, pool, worker_id, reason, exitcode, victims):
        record('died', pool=pool.name, worker_id=worker_id, reason=reason, exitcode=exitcode,
               victims=[rid for rid, _ in victims])
        super().on_worker_died(pool, worker_id, reason, exitcode, victims)

    def on_pending_removed(self, request_id, pending, reason):
        record('removed', request_id=request_id, reason=reason, path=pending.client.path,
               status=pending.client.status)

    @_workers.sync('/d/status', 'GET')
    def status(self, client, path_params):
        client.respond({'pools': [pool.status() for pool in self._pools],
                        'idle_ticks': self.idle_ticks, 'reader_hits': self.reader_hits})

    @_workers.sync('/d/config', 'POST')
    def config(self, client, path_params):
        for pool in self._pools:
            pool.send_config(client.data)
        client.respond({'sent': client.data})

    @_workers.sync('/d/poke', 'GET')
    def poke(self, client, path_params):
        self.pipe_w.send(b'x')
        client.respond({'poked': True})


def make():
    pools = [
        _workers.WorkerPool(
            ResumableWorker,
            num_workers=int(os.environ.get('WG_WORKERS', '2')),
            routes=['/w/**'],
            timeout=env_float('WG_TIMEOUT', 5),
            stuck_timeout=env_float('WG_STUCK', 60),
            heartbeat_interval=env_float('WG_HEARTBEAT', 0.2),
            max_restarts=int(os.environ.get('WG_MAX_RESTARTS', '100')),
            restart_window=env_float('WG_RESTART_WINDOW', 60),
            recovery_interval=env_float('WG_RECOVERY', 0) or None,
            permanent_failure_exitcode=42,
            worker_memory_limit_mb=int(os.environ.get('WG_MEMORY_MB', '0')) or None,
            queue_warning=int(os.environ.get('WG_QUEUE_WARNING', '100')),
        ),
        _workers.WorkerPool(SinkWorker, num_workers=1, routes=['/sink/**'],
                            max_queue=int(os.environ.get('WG_SINK_QUEUE', '10000'))),
    ]
    return SuperDispatcher(pools=pools, shutdown_timeout=env_float('WG_SHUTDOWN_TIMEOUT', 3))
