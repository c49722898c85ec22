# docs/examples/static_site.py
import collections
import os

import workgate as _workers

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'static')


class PageWorker(_workers.Worker):
    @_workers.api('/{name}', 'GET')
    def page(self, request):
        return {'error': f"no page called {request.path_params['name']}"}, 404


class StaticApp(_workers.Dispatcher):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.served = collections.Counter()

    def on_static_served(self, client, file_path, status):
        self.served[f'{os.path.basename(file_path)} {status}'] += 1

    @_workers.sync('/download/hello', 'GET')
    def download(self, client, path_params):
        client.respond_file(os.path.join(STATIC, 'hello.txt'),
                            headers={'Content-Disposition': 'attachment; filename="hello.txt"'})

    @_workers.sync('/static-stats', 'GET')
    def stats(self, client, path_params):
        client.respond(self.served)


def make():
    return StaticApp(
        static_routes={
            '/': STATIC,
            '/assets/': {
                'path': os.path.join(STATIC, 'assets'),
                'headers': {'Cache-Control': 'public, max-age=86400'},
                'authoritative': True,
            },
        },
        pools=[_workers.WorkerPool(PageWorker)],
    )
