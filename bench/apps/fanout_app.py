"""SSE fan-out app for workgate and uhttp-workers (same source, like pool_app).

One worker holds every subscriber, so one publish reaches all of them:

    GET  /events           an event stream; the worker keeps the request
    POST /publish?rounds=K sends K events to every subscriber, answers
                           {"subscribers": N, "events": N * K}
    GET  /count            {"subscribers": N}

Run as: fanout_app.py PORT (BENCH_WORKERS_MODULE picks the package).
"""

import argparse
import importlib
import os

WORKERS_MODULE = os.environ.get("BENCH_WORKERS_MODULE", "workgate")
_workers = importlib.import_module(WORKERS_MODULE)

PAYLOAD = {"price": 101.25, "symbol": "WGT", "note": "x" * 40}


class FanoutWorker(_workers.Worker):
    def setup(self):
        self.subscribers = {}

    @_workers.api("/events", "GET")
    def events(self, request):
        request.response_stream()
        self.subscribers[request.request_id] = request
        return _workers.DEFERRED

    @_workers.api("/publish", "POST")
    def publish(self, request):
        rounds = int((request.query or {}).get("rounds", "1"))
        subscribers = list(self.subscribers.values())
        for number in range(rounds):
            for subscriber in subscribers:
                subscriber.send_event(data=PAYLOAD, event="tick", event_id=number)
        return {"subscribers": len(subscribers), "events": len(subscribers) * rounds}

    @_workers.api("/count", "GET")
    def count(self, request):
        return {"subscribers": len(self.subscribers)}

    def on_disconnect(self, request_id):
        self.subscribers.pop(request_id, None)


def build_dispatcher(port: int):
    pool = _workers.WorkerPool(FanoutWorker, num_workers=1, timeout=120)
    return _workers.Dispatcher(
        port=port, address="127.0.0.1", pools=[pool], shutdown_timeout=2,
        log_level=_workers.LOG_WARNING, max_pending=100000, access_log=False,
        # uhttp-server 2.6.2 keeps at most 32 connections by default;
        # workgate accepts this keyword and ignores it.
        max_waiting_clients=5000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    build_dispatcher(parser.parse_args().port).run()


if __name__ == "__main__":
    main()
