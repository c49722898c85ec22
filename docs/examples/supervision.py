# docs/examples/supervision.py
import os
import sys
import time

import workgate as _workers

LICENSE_MISSING = 42


class FragileWorker(_workers.Worker):
    @_workers.api('/api/hello', 'GET')
    def hello(self, request):
        return {'hello': 'world'}

    @_workers.api('/api/sleep/{seconds:float}', 'GET')
    def sleep(self, request):
        time.sleep(request.path_params['seconds'])
        return {'slept': request.path_params['seconds']}

    @_workers.api('/api/crash/{after:float}', 'GET')
    def crash(self, request):
        time.sleep(request.path_params['after'])
        os._exit(1)

    @_workers.api('/api/spin', 'GET')
    def spin(self, request):
        while True:
            pass

    @_workers.api('/api/allocate/{mib:int}', 'GET')
    def allocate(self, request):
        block = bytearray(request.path_params['mib'] * 1024 * 1024)
        return {'allocated_mib': len(block) // (1024 * 1024)}


class LicensedWorker(_workers.Worker):
    def setup(self):
        if not os.path.exists(self.kwargs['license_file']):
            self.log.critical('license file %s not found', self.kwargs['license_file'])
            sys.exit(LICENSE_MISSING)

    @_workers.api('/licensed/report', 'GET')
    def report(self, request):
        return {'report': 'ready'}


class BrokenWorker(_workers.Worker):
    def setup(self):
        raise RuntimeError('cannot reach the database')


class SupervisionApp(_workers.Dispatcher):
    @_workers.sync('/health', 'GET')
    def health(self, client, path_params):
        status = self._pools[0].status()
        client.respond({'alive': status['alive_count'], 'degraded': status['degraded'],
                        'restarts': sum(worker['restarts'] for worker in status['workers'])})


def make():
    return SupervisionApp(pools=[
        _workers.WorkerPool(
            FragileWorker, routes=['/api/**'], timeout=1, stuck_timeout=2,
            max_restarts=3, restart_window=60, recovery_interval=2,
            worker_memory_limit_mb=512),
        _workers.WorkerPool(
            LicensedWorker, routes=['/licensed/**'],
            permanent_failure_exitcode=LICENSE_MISSING, license_file='/nonexistent/license.key'),
        _workers.WorkerPool(BrokenWorker, routes=['/broken/**']),
    ])
