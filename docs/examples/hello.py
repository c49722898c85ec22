# docs/examples/hello.py
import workgate as _workers


class GreetWorker(_workers.Worker):
    @_workers.api('/api/greet/{name}', 'GET')
    def greet(self, request):
        return {'message': f"Hello, {request.path_params['name']}!"}


class HelloApp(_workers.Dispatcher):
    @_workers.sync('/health', 'GET')
    def health(self, client, path_params):
        client.respond({'status': 'ok'})


def make():
    pool = _workers.WorkerPool(GreetWorker, num_workers=2, routes=['/api/**'])
    return HelloApp(port=8080, pools=[pool])


if __name__ == '__main__':
    make().run()
