# docs/examples/requests.py
import workgate as _workers


class FormsWorker(_workers.Worker):
    @_workers.api('/api/forms/data', 'GET')
    def data_only(self, request):
        return {'created': False}

    @_workers.api('/api/forms/status', 'POST')
    def with_status(self, request):
        return {'created': True}, 201

    @_workers.api('/api/forms/headers', 'GET')
    def with_headers(self, request):
        return 'see the headers\n', 200, {'X-Handler': 'with_headers'}

    @_workers.api('/api/forms/response', 'GET')
    def response_object(self, request):
        return _workers.Response(
            data={'ok': True}, status=202,
            headers={'Cache-Control': 'no-store'},
            cookies={'session': {'value': 'abc123', 'path': '/', 'httponly': True}})

    @_workers.api('/api/forms/bytes', 'GET')
    def raw_bytes(self, request):
        return b'binary data'

    @_workers.api('/api/forms/empty', 'DELETE')
    def empty(self, request):
        return None, 204

    @_workers.api('/api/forms/error', 'GET')
    def error(self, request):
        raise RuntimeError('database connection refused')

    @_workers.api('/api/forms/lookup/{key}', 'GET')
    def lookup(self, request):
        return {'value': {'a': 1}[request.path_params['key']]}

    def on_request_error(self, request, err):
        if isinstance(err, KeyError):
            return {'error': f'unknown key {err}'}, 404
        return super().on_request_error(request, err)


class InspectWorker(_workers.Worker):
    @_workers.api('/api/inspect', 'GET', 'POST', 'PUT')
    def inspect(self, request):
        data = request.data
        if isinstance(data, bytes):
            data = f'{len(data)} raw bytes'
        return {
            'method': request.method,
            'path': request.path,
            'query': request.query,
            'data': data,
            'content_type': request.content_type,
            'client': request.headers.get('x-client'),
            'cookies': request.cookies,
            'context': request.context,
        }


class RequestsApp(_workers.Dispatcher):
    def on_request_accepted(self, request_id, client, pool):
        return {'pool': pool.name, 'secure': client.is_secure}


def make():
    return RequestsApp(pools=[
        _workers.WorkerPool(FormsWorker, routes=['/api/forms/**']),
        _workers.WorkerPool(InspectWorker, routes=['/api/inspect']),
    ])
