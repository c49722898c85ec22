# docs/examples/logging_app.py
import collections

import workgate as _workers


class OrderWorker(_workers.Worker):
    LOG_NAME = 'orders-{worker_id}'

    @_workers.api('/api/orders/{order_id:int}', 'GET')
    def order(self, request):
        order_id = request.path_params['order_id']
        self.log.info('loading order %d', order_id)
        self.log.debug('cache miss for order {order_id}', order_id=order_id)
        if self.log.is_debug:
            self.log.debug('request headers: %s', request.headers)
        if order_id > 1000:
            self.log.warning('order {order_id} is {days} days late', order_id=order_id, days=3)
        return {'order': order_id}


class LoggingApp(_workers.Dispatcher):
    LOG_NAME = 'gateway'

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.recent = collections.deque(maxlen=20)

    def on_log(self, name, level, message):
        if name.startswith('orders-'):
            self.recent.append(f'{_workers.LOG_LEVEL_NAMES[level]} {name}: {message}')
        super().on_log(name, level, message)

    @_workers.sync('/logs/orders', 'GET')
    def order_logs(self, client, path_params):
        client.respond({'records': list(self.recent)})


def make():
    pool = _workers.WorkerPool(OrderWorker, routes=['/api/**'], log_level=_workers.LOG_INFO)
    return LoggingApp(pools=[pool])
