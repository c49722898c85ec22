"""workgate demo: hash and compress uploaded files, keep the results in SQLite.

Processes and routes:

- The dispatcher serves the browser page at ``/`` from static/, handles
  ``GET /health`` itself, and rejects every pool request without a valid
  ``X-API-Key`` header.
- ``ComputeWorker`` (2 processes) takes ``POST /api/files?name=...&level=...``
  with the file as the raw request body. It computes the SHA-256 and the
  zlib and lzma compressed sizes, returns them, and forwards the same result
  to the storage pool.
- ``StorageWorker`` (1 process, one SQLite connection) stores forwarded
  results and serves ``GET /api/results``, ``GET /api/results/{id}`` and
  ``DELETE /api/results/{id}``. ``GET /api/results/events`` opens a
  Server-Sent Events stream that sends every result as it is stored and the
  id of every deleted result. Browsers cannot set headers on an EventSource
  request, so this path also accepts the key as the ``key`` query parameter.

Run from this folder: ``python app.py [--host H] [--port P] [--data-dir D]``.
The API key is read from the WORKGATE_DEMO_KEY environment variable
(default ``demo-key``).
"""

import argparse
import datetime
import hashlib
import hmac
import json
import lzma
import os
import secrets
import sqlite3
import time
import zlib
from pathlib import Path

import workgate as _workers

HERE = Path(__file__).resolve().parent
DEFAULT_API_KEY = 'demo-key'
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_NAME_LENGTH = 200
DEFAULT_LEVEL = 6
DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 500
# Each subscriber keeps a connection and a slot in the dispatcher's
# in-flight table until it disconnects.
MAX_SUBSCRIBERS = 100
# Milliseconds an EventSource waits before it reconnects after losing the
# stream, sent in the first event's retry field.
RECONNECT_DELAY_MS = 2000
EVENTS_ROUTE = '/api/results/events'

# Forwarded results go to this path. The dispatcher rejects client requests
# under /internal/, so only workers can reach it, through forward().
STORE_ROUTE = '/internal/results'


class BadRequest(Exception):
    """Invalid client input. The message is sent back as the JSON error."""


def query_value(request, key, default=None):
    """Return one query parameter as a string, or default when it is absent.

    Raises BadRequest when the parameter is given more than once.
    """
    query = request.query or {}
    value = query.get(key, default)
    if isinstance(value, list):
        raise BadRequest(f'query parameter {key!r} must be given only once')
    return value


def parse_level(request):
    """Return the compression level from ?level= (0 to 9, default 6)."""
    raw = query_value(request, 'level')
    if raw is None or raw == '':
        return DEFAULT_LEVEL
    if not raw.isdigit() or int(raw) > 9:
        raise BadRequest(f'invalid level {raw!r}: use an integer from 0 to 9')
    return int(raw)


def parse_name(request):
    """Return the file name from ?name= (default 'upload.bin')."""
    name = query_value(request, 'name') or 'upload.bin'
    if len(name) > MAX_NAME_LENGTH:
        raise BadRequest(f'name is longer than {MAX_NAME_LENGTH} characters')
    if not name.isprintable():
        raise BadRequest('name must not contain control characters')
    return name


def measure_compression(compress, body):
    """Compress body and return its compressed size, ratio and time taken."""
    started = time.perf_counter()
    compressed_size = len(compress(body))
    seconds = time.perf_counter() - started
    return {
        'size': compressed_size,
        'ratio': round(compressed_size / len(body), 4),
        'seconds': round(seconds, 4),
    }


# ---------------------------------------------------------------- compute


class ComputeWorker(_workers.Worker):
    """Worker that hashes and compresses uploaded files (CPU-bound)."""

    @_workers.api('/api/files', 'POST')
    def upload(self, request):
        try:
            name = parse_name(request)
            level = parse_level(request)
        except BadRequest as err:
            return {'error': str(err)}, 400

        body = request.data
        if body is None:
            return {'error': 'empty body: send the file as the request body'}, 400
        if not isinstance(body, (bytes, bytearray)):
            # A JSON or form body arrives parsed, so its raw bytes are gone.
            return {
                'error': 'unsupported Content-Type: send the file as the raw '
                         'body with Content-Type: application/octet-stream',
            }, 415

        started = time.perf_counter()
        sha256 = hashlib.sha256(body).hexdigest()
        zlib_result = measure_compression(
            lambda data: zlib.compress(data, level), body)
        # lzma at level 9 takes seconds on a large file, so tell the
        # dispatcher this worker is still busy before the next step.
        self.keep_alive()
        lzma_result = measure_compression(
            lambda data: lzma.compress(data, preset=level), body)

        result = {
            'id': secrets.token_hex(8),
            'name': name,
            'size': len(body),
            'sha256': sha256,
            'level': level,
            'zlib': zlib_result,
            'lzma': lzma_result,
            'seconds': round(time.perf_counter() - started, 4),
            'created_at': datetime.datetime.now(datetime.UTC).isoformat(
                timespec='seconds'),
            'worker_pid': os.getpid(),
        }
        # forward() is fire-and-forget. It is sent before the response, and
        # the storage pool's single worker takes requests in arrival order,
        # so a read that follows this response normally finds the result.
        self.forward(STORE_ROUTE, result)
        self.log.info('computed result %s (%d bytes)', result['id'], len(body))
        return result, 201, {'Location': f"/api/results/{result['id']}"}


# ---------------------------------------------------------------- storage


SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    document TEXT NOT NULL
)
"""


class StorageWorker(_workers.Worker):
    """Worker with one SQLite connection, run as a pool of one process.

    A single process handles requests in arrival order, so a forwarded
    result is stored before any read that arrives after it. The same process
    keeps the event stream subscribers, so every stored or deleted result
    reaches all of them.
    """

    def setup(self):
        self.db = sqlite3.connect(self.kwargs['db_path'])
        self.db.execute(SCHEMA)
        self.db.commit()
        # Open event streams by request id. A subscriber stays here until
        # on_disconnect() reports that its client went away.
        self.subscribers = {}
        self.log.info('opened %s', self.kwargs['db_path'])

    def teardown(self):
        self.db.close()
        self.log.info('closed %s', self.kwargs['db_path'])

    @_workers.api(STORE_ROUTE, 'POST')
    def store(self, request):
        # Forwarded requests carry request_id -1, and the dispatcher discards
        # their response.
        if request.request_id != -1:
            return {'error': 'Not found'}, 404
        result = request.data
        if not isinstance(result, dict) or 'id' not in result:
            self.log.error('dropped a forwarded result without an id')
            return None
        with self.db:
            self.db.execute(
                'INSERT OR REPLACE INTO results (id, created_at, document) '
                'VALUES (?, ?, ?)',
                (result['id'], result['created_at'], json.dumps(result)))
        self.log.info('stored result %s', result['id'])
        self.broadcast('result', result)
        return None

    # This route must come before /api/results/{id}, because routes are
    # tried in the order they are defined and {id} also matches "events".
    @_workers.api(EVENTS_ROUTE, 'GET')
    def subscribe(self, request):
        if len(self.subscribers) >= MAX_SUBSCRIBERS:
            self.log.warning('rejected subscriber %d: %d event streams already open',
                             request.request_id, len(self.subscribers))
            return {
                'error': f'too many event stream subscribers ({MAX_SUBSCRIBERS}); '
                         'try again later',
            }, 503, {'Retry-After': '5'}
        request.response_stream()
        self.subscribers[request.request_id] = request
        request.send_event(
            {'subscriber': request.request_id, 'subscribers': len(self.subscribers)},
            event='hello', retry=RECONNECT_DELAY_MS)
        self.log.info('subscriber %d joined (%d open)',
                      request.request_id, len(self.subscribers))
        return _workers.DEFERRED

    def on_disconnect(self, request_id):
        if self.subscribers.pop(request_id, None) is not None:
            self.log.info('subscriber %d left (%d open)',
                          request_id, len(self.subscribers))

    def broadcast(self, event, data):
        """Send one event to every open event stream."""
        for request in self.subscribers.values():
            request.send_event(data, event=event)

    @_workers.api('/api/results', 'GET')
    def list_results(self, request):
        raw_limit = query_value(request, 'limit', str(DEFAULT_LIST_LIMIT))
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIST_LIMIT:
            return {
                'error': f'invalid limit {raw_limit!r}: '
                         f'use an integer from 1 to {MAX_LIST_LIMIT}',
            }, 400
        rows = self.db.execute(
            'SELECT document FROM results ORDER BY created_at DESC, rowid DESC '
            'LIMIT ?', (int(raw_limit),)).fetchall()
        (total,) = self.db.execute('SELECT COUNT(*) FROM results').fetchone()
        return {'total': total, 'results': [json.loads(row[0]) for row in rows]}

    @_workers.api('/api/results/{id}', 'GET')
    def get_result(self, request):
        result_id = request.path_params['id']
        row = self.db.execute(
            'SELECT document FROM results WHERE id = ?', (result_id,)).fetchone()
        if row is None:
            return {'error': f'result not found: {result_id}'}, 404
        return json.loads(row[0])

    @_workers.api('/api/results/{id}', 'DELETE')
    def delete_result(self, request):
        result_id = request.path_params['id']
        with self.db:
            cursor = self.db.execute(
                'DELETE FROM results WHERE id = ?', (result_id,))
        if cursor.rowcount == 0:
            return {'error': f'result not found: {result_id}'}, 404
        self.broadcast('deleted', {'id': result_id})
        return {'deleted': result_id}


# ---------------------------------------------------------------- dispatcher


def request_api_key(client):
    """Return the API key a request carries, as bytes (empty when missing).

    The X-API-Key header counts everywhere. The event stream also accepts
    ?key=, because the browser's EventSource cannot send headers. A key in
    the URL can end up in browser history and proxy logs, so no other path
    accepts it.
    """
    key = client.headers.get('x-api-key')
    if key is None and client.method == 'GET' and client.path == EVENTS_ROUTE:
        key = (client.query or {}).get('key')
        if not isinstance(key, str):
            # Missing, or a list because ?key= was given more than once.
            key = None
    return (key or '').encode('utf-8', 'replace')


class DemoDispatcher(_workers.Dispatcher):
    """Dispatcher that checks the API key and serves /health itself."""

    def __init__(self, api_key, **kwargs):
        super().__init__(**kwargs)
        self._api_key = api_key.encode()

    def do_check(self, client):
        if client.path.startswith('/internal/'):
            client.respond({'error': 'Not found'}, status=404)
            raise _workers.RejectRequest()
        if not hmac.compare_digest(request_api_key(client), self._api_key):
            if client.path == EVENTS_ROUTE:
                error = 'missing or invalid API key: send the X-API-Key header or ?key='
            else:
                error = 'missing or invalid X-API-Key header'
            client.respond({'error': error}, status=401)
            raise _workers.RejectRequest()

    @_workers.sync('/health', 'GET')
    def health(self, client, path_params):
        healthy = all(
            pool.alive_count > 0 and not pool.is_degraded
            for pool in self._pools)
        client.respond({
            'status': 'ok' if healthy else 'degraded',
            'pools': [pool.status() for pool in self._pools],
        })


def build_dispatcher(host, port, data_dir, api_key):
    """Create the dispatcher with its two pools. Does not start it."""
    compute = _workers.WorkerPool(
        ComputeWorker, num_workers=2,
        routes=['/api/files/**'],
        timeout=60,
        log_level=_workers.LOG_INFO)
    storage = _workers.WorkerPool(
        StorageWorker, num_workers=1,
        routes=['/api/results/**', STORE_ROUTE],
        timeout=10,
        log_level=_workers.LOG_INFO,
        db_path=str(data_dir / 'results.sqlite3'))
    return DemoDispatcher(
        api_key,
        address=host,
        port=port,
        pools=[compute, storage],
        # Paths with no file under static/ fall through to /health and the
        # pools, so the page can live at / without a prefix.
        static_routes={'/': str(HERE / 'static')},
        max_content_length=MAX_UPLOAD_BYTES)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--host', default='0.0.0.0',
        help='address to listen on (default: %(default)s)')
    parser.add_argument(
        '--port', type=int, default=8080,
        help='TCP port to listen on (default: %(default)s)')
    parser.add_argument(
        '--data-dir', type=Path, default=HERE / 'data',
        help='folder for the SQLite database, created if missing '
             '(default: data/ next to app.py)')
    return parser.parse_args()


def main():
    args = parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    api_key = os.environ.get('WORKGATE_DEMO_KEY', DEFAULT_API_KEY)
    dispatcher = build_dispatcher(
        args.host, args.port, args.data_dir.resolve(), api_key)
    dispatcher.run()


# Worker processes import this module again, so start the server only when
# it is run as a script.
if __name__ == '__main__':
    main()
