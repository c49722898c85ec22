# docs/examples/checks.py
import workgate as _workers

API_KEYS = {'key-alice': 'alice', 'key-root': 'admin'}


class AccountWorker(_workers.Worker):
    def do_check(self, request):
        if request.method != 'GET' and request.context['user'] != 'admin':
            return {'error': 'read-only key'}, 403
        return None

    @_workers.api('/api/accounts/{name}', 'GET', 'DELETE')
    def account(self, request):
        name = request.path_params['name']
        if name == 'root':
            raise _workers.RejectRequest({'error': 'no such account'}, 404)
        if request.method == 'DELETE':
            return {'deleted': name}
        return {'account': name, 'viewer': request.context['user']}

    @_workers.api('/api/accounts/{name}/lock', 'POST')
    def lock(self, request):
        raise _workers.RejectRequest()


class ChecksApp(_workers.Dispatcher):
    def do_check(self, client):
        if client.headers.get('x-api-key') not in API_KEYS:
            client.respond({'error': 'missing or unknown X-API-Key'}, status=401)
            raise _workers.RejectRequest()

    def do_check_sync(self, client):
        if client.path.startswith('/admin/') \
                and API_KEYS.get(client.headers.get('x-api-key')) != 'admin':
            raise _workers.RejectRequest({'error': 'admin key required'}, 403)

    def on_request_accepted(self, request_id, client, pool):
        return {'user': API_KEYS[client.headers['x-api-key']]}

    @_workers.sync('/health', 'GET')
    def health(self, client, path_params):
        client.respond({'status': 'ok'})

    @_workers.sync('/admin/pools', 'GET')
    def pools(self, client, path_params):
        client.respond({'pools': [pool.name for pool in self._pools]})


def make():
    return ChecksApp(pools=[_workers.WorkerPool(AccountWorker, routes=['/api/**'])])
