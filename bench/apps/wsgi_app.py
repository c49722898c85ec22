"""Benchmark app as a plain WSGI callable, for gunicorn.

Same routes and response bodies as pool_app.py: GET /hello, POST /sha256,
GET /cpu.
"""

import hashlib
import json

from cpu_work import burn, loops_from_env

CPU_LOOPS = loops_from_env()


def _json_response(start_response, status: str, obj) -> list[bytes]:
    body = json.dumps(obj).encode()
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
    ]
    start_response(status, headers)
    return [body]


def app(environ, start_response):
    method = environ["REQUEST_METHOD"]
    path = environ["PATH_INFO"]

    if path == "/hello" and method == "GET":
        return _json_response(start_response, "200 OK", {"hello": "world"})

    if path == "/sha256" and method == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        digest = hashlib.sha256(body).hexdigest()
        return _json_response(start_response, "200 OK", {"sha256": digest})

    if path == "/cpu" and method == "GET":
        return _json_response(start_response, "200 OK", {"result": burn(CPU_LOOPS)})

    return _json_response(start_response, "404 Not Found", {"error": "Not found"})
