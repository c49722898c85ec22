"""Workload 5: Server-Sent Events fan-out, one publisher to N open streams.

For each server and each N: open N event streams from one asyncio client
process, read the dispatcher's resident memory before and after (memory per
open stream), then ask the worker to publish K events to every stream and
time until every client has received all of them (events delivered per
second). Every wait is bounded, and only loopback is used.

Run it with the benchmark's virtual environment (make -C bench creates it):

    bench/.venv/bin/python bench/fanout.py --clients 900,4000 --rounds 20

uhttp-workers 1.8.1 serves its connections with select(), which cannot
watch descriptors numbered 1024 or more, so it is measured only where N
stays below that (--uhttp-max-clients).
"""

import argparse
import asyncio
import http.client
import json
import resource
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from harness.process import ServerProcess, free_port  # noqa: E402

APP = BENCH_DIR / 'apps' / 'fanout_app.py'
RESULTS = BENCH_DIR / 'results'
SERVERS = {'workgate': 'workgate', 'uhttp-workers': 'uhttp.workers'}
CONNECT_TIMEOUT = 60.0
CONNECT_BATCH = 8
DELIVERY_TIMEOUT = 120.0


def rss_kib(pid: int) -> int:
    with open(f'/proc/{pid}/status') as status:
        for line in status:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    raise RuntimeError(f'no VmRSS for pid {pid}')


def request(port: int, method: str, path: str) -> dict:
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=DELIVERY_TIMEOUT)
    try:
        conn.request(method, path, body=b'' if method == 'POST' else None)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f'{method} {path} answered {response.status}: {body[:200]!r}')
        return json.loads(body)
    finally:
        conn.close()


class StreamClient(asyncio.Protocol):
    """One event stream; counts the blank lines that end each event."""

    def __init__(self, tally: dict):
        self.tally = tally
        self.in_head = True
        self.last_byte = b''
        self.events = 0
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        transport.write(b'GET /events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n')

    def data_received(self, data: bytes) -> None:
        if self.in_head:
            end = data.find(b'\r\n\r\n')
            if end < 0:
                return
            self.in_head = False
            self.tally['open'] += 1
            data = data[end + 4:]
        count = data.count(b'\n\n')
        if self.last_byte == b'\n' and data[:1] == b'\n':
            count += 1
        if data:
            self.last_byte = data[-1:]
        self.events += count
        self.tally['events'] += count

    def connection_lost(self, exc) -> None:
        self.tally['lost'] += 1


async def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f'timed out after {timeout:.0f}s waiting for {what}')
        await asyncio.sleep(0.01)


async def measure(port: int, pid: int, clients: int, rounds: int) -> dict:
    loop = asyncio.get_running_loop()
    tally = {'open': 0, 'events': 0, 'lost': 0}
    rss_before = rss_kib(pid)
    streams = []
    # Open in small batches and wait for each: uhttp-server 2.6.2 listens
    # with a backlog of 8, so a burst of connects would stall in SYN retries.
    for start in range(0, clients, CONNECT_BATCH):
        batch = [loop.create_connection(lambda: StreamClient(tally), '127.0.0.1', port)
                 for _ in range(min(CONNECT_BATCH, clients - start))]
        for _, protocol in await asyncio.gather(*batch):
            streams.append(protocol)
        opened = len(streams)
        await wait_for(lambda opened=opened: tally['open'] >= opened, CONNECT_TIMEOUT,
                       f'{opened} streams')
    count = await loop.run_in_executor(None, request, port, 'GET', '/count')
    if count['subscribers'] != clients:
        raise RuntimeError(f'worker holds {count["subscribers"]} subscribers, not {clients}')
    rss_open = rss_kib(pid)

    await loop.run_in_executor(None, request, port, 'POST', '/publish?rounds=1')
    await wait_for(lambda: tally['events'] >= clients, DELIVERY_TIMEOUT, 'the warm-up event')
    delivered_before = tally['events']
    started = time.monotonic()
    answer = await loop.run_in_executor(None, request, port, 'POST', f'/publish?rounds={rounds}')
    target = delivered_before + clients * rounds
    await wait_for(lambda: tally['events'] >= target, DELIVERY_TIMEOUT,
                   f'{clients * rounds} events')
    elapsed = time.monotonic() - started
    rss_after = rss_kib(pid)
    for stream in streams:
        stream.transport.close()
    return {
        'clients': clients,
        'rounds': rounds,
        'events': answer['events'],
        'seconds': round(elapsed, 3),
        'events_per_second': round(clients * rounds / elapsed),
        'rss_before_kib': rss_before,
        'rss_open_kib': rss_open,
        'rss_after_kib': rss_after,
        'kib_per_stream': round((rss_open - rss_before) / clients, 2),
        'lost_streams': tally['lost'],
    }


def run_case(server: str, clients: int, rounds: int, python: str, logs: Path) -> dict:
    port = free_port()
    env = {'BENCH_WORKERS_MODULE': SERVERS[server], 'PYTHONPATH': str(APP.parent),
           'PATH': '/usr/bin:/bin'}
    log = logs / f'fanout-{server}-{clients}.log'
    process = ServerProcess([python, str(APP), str(port)], APP.parent, env, log)
    try:
        process.wait_ready(port, '/count', 60)
        return asyncio.run(measure(port, process.pid, clients, rounds))
    finally:
        process.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--clients', default='900,4000',
                        help='comma-separated numbers of open streams (default 900,4000)')
    parser.add_argument('--rounds', type=int, default=20,
                        help='events published to every stream in the timed part (default 20)')
    parser.add_argument('--servers', default='workgate,uhttp-workers',
                        help='comma-separated servers to measure')
    parser.add_argument('--uhttp-max-clients', type=int, default=1000,
                        help='largest N tried on uhttp-workers (select() limit)')
    parser.add_argument('--python', default=sys.executable,
                        help='interpreter that has the servers installed')
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    logs = RESULTS / 'logs'
    logs.mkdir(parents=True, exist_ok=True)
    results = []
    for clients in (int(n) for n in args.clients.split(',')):
        for server in args.servers.split(','):
            if server == 'uhttp-workers' and clients > args.uhttp_max_clients:
                results.append({'server': server, 'clients': clients,
                                'skipped': 'select() cannot watch that many descriptors'})
                continue
            try:
                row = run_case(server, clients, args.rounds, args.python, logs)
            except (RuntimeError, TimeoutError, OSError) as err:
                row = {'clients': clients, 'error': str(err)}
            row['server'] = server
            results.append(row)
            print(json.dumps(row), flush=True)

    print()
    print(f'{"server":<15} {"streams":>7} {"events/s":>10} {"KiB/stream":>10}  ratio')
    for row in results:
        if 'events_per_second' not in row:
            print(f'{row["server"]:<15} {row["clients"]:>7}  {row.get("skipped") or row["error"]}')
            continue
        ratio = ''
        if row['server'] == 'workgate':
            other = next((r for r in results if r['server'] == 'uhttp-workers'
                          and r['clients'] == row['clients'] and 'events_per_second' in r), None)
            if other:
                ratio = f'{row["events_per_second"] / other["events_per_second"]:.2f}x'
        print(f'{row["server"]:<15} {row["clients"]:>7} {row["events_per_second"]:>10,} '
              f'{row["kib_per_stream"]:>10}  {ratio}')
    (RESULTS / 'fanout.json').write_text(json.dumps(results, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
