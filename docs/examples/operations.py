# docs/examples/operations.py
import workgate as _workers


class ClientWorker(_workers.Worker):
    @_workers.api('/api/client', 'GET')
    def client(self, request):
        return {'remote_address': request.remote_address}


def make():
    return _workers.Dispatcher(
        pools=[_workers.WorkerPool(ClientWorker, num_workers=2, routes=['/api/**'])],
        status_path='/_status',
        metrics_path='/_metrics',
        trusted_proxies=['127.0.0.1', '::1'],
    )
