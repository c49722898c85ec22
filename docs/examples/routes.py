# docs/examples/routes.py
import workgate as _workers


class ItemHandler(_workers.ApiHandler):
    PATTERN = '/api/items'

    @_workers.api('', 'GET')
    def list_items(self, request):
        return {'items': sorted(self.worker.items), 'prefix': self.PATTERN}

    @_workers.api('/{item_id:int}', 'GET')
    def get_item(self, request):
        item_id = request.path_params['item_id']
        if item_id not in self.worker.items:
            return {'error': f'no item {item_id}'}, 404
        return {'id': item_id, 'name': self.worker.items[item_id]}

    @_workers.api('/{item_id:int}', 'DELETE')
    def delete_item(self, request):
        return {'deleted': request.path_params['item_id']}


class ArchivedItemHandler(ItemHandler):
    PATTERN = '/api/archive'


class CatalogWorker(_workers.Worker):
    HANDLERS = [ItemHandler, ArchivedItemHandler]

    def setup(self):
        self.items = {1: 'book', 2: 'lamp'}

    @_workers.api('/api/price/{amount:float}/{currency}', 'GET')
    def price(self, request):
        return request.path_params

    @_workers.api('/api/echo-method')
    def echo_method(self, request):
        return {'method': request.method}


def make():
    pool = _workers.WorkerPool(CatalogWorker, routes=['/api/**'])
    return _workers.Dispatcher(pools=[pool])
