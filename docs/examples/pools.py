# docs/examples/pools.py
import os

import workgate as _workers

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'static')


class ReportWorker(_workers.Worker):
    def setup(self):
        self.currency = self.kwargs['currency']
        self.rates = {}
        self.served = 0

    def teardown(self):
        self.log.info('served %d reports', self.served)

    def on_config(self, config):
        self.rates = config['rates']

    @_workers.api('/api/reports/total', 'GET')
    def total(self, request):
        self.served += 1
        rate = self.rates.get(self.currency, 1)
        return {'pool': self.pool_name, 'currency': self.currency, 'total': 100 * rate}


class ApiWorker(_workers.Worker):
    @_workers.api('/api/{name}', 'GET')
    def resource(self, request):
        return {'pool': self.pool_name, 'name': request.path_params['name']}


class GatewayApp(_workers.Dispatcher):
    @_workers.sync('/api/version', 'GET')
    def version(self, client, path_params):
        client.respond({'version': '1.0', 'served_by': 'dispatcher'})

    @_workers.sync('/admin/rates', 'POST')
    def set_rates(self, client, path_params):
        for pool in self._pools:
            pool.send_config({'rates': client.data})
        client.respond({'sent_to': [pool.name for pool in self._pools]})


def make():
    return GatewayApp(
        static_routes={'/api/docs/': STATIC},
        pools=[
            _workers.WorkerPool(ReportWorker, routes=['/api/reports/**'],
                                log_level=_workers.LOG_INFO, currency='EUR'),
            _workers.WorkerPool(ApiWorker, num_workers=2, routes=['/api/**']),
        ],
    )
