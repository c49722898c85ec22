# docs/examples/hooks.py
import collections
import os
import time

import workgate as _workers


class JobWorker(_workers.Worker):
    @_workers.api('/api/jobs/quick', 'GET')
    def quick(self, request):
        return {'done': True}

    @_workers.api('/api/jobs/slow', 'GET')
    def slow(self, request):
        time.sleep(1.2)
        return {'done': True}

    @_workers.api('/api/jobs/crash', 'GET')
    def crash(self, request):
        os._exit(1)

    @_workers.api('/api/jobs/watch', 'GET')
    def watch(self, request):
        request.response_stream()
        request.send_event('started')
        return _workers.DEFERRED

    @_workers.api('/api/jobs/list', 'GET')
    def list_jobs(self, request):
        request.response_ndjson()
        request.send_ndjson({'job': 1})
        request.send_ndjson({'job': 2})
        request.response_stream_end()
        return _workers.DEFERRED


class HooksApp(_workers.Dispatcher):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.removed = collections.Counter()
        self.answered = collections.Counter()
        self.lost = []
        self.idle_calls = 0

    def on_response(self, response, pending):
        self.answered[response.status] += 1

    def on_pending_removed(self, request_id, pending, reason):
        self.removed[reason] += 1

    def on_worker_died(self, pool, worker_id, reason, exitcode, victims):
        for request_id, pending in victims:
            self.lost.append({'request_id': request_id, 'path': pending.client.path,
                              'reason': reason, 'exitcode': exitcode})
        super().on_worker_died(pool, worker_id, reason, exitcode, victims)

    def on_idle(self):
        self.idle_calls += 1

    @_workers.sync('/stats', 'GET')
    def stats(self, client, path_params):
        client.respond({'removed': self.removed, 'answered': self.answered,
                        'lost': self.lost, 'idle_seen': self.idle_calls > 0})


def make():
    return HooksApp(pools=[_workers.WorkerPool(JobWorker, timeout=1)])
