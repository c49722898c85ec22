"""Benchmark app as a plain ASGI callable, for uvicorn.

Same routes and response bodies as pool_app.py, with no framework in
between: GET /hello, POST /sha256, GET /cpu.
"""

import hashlib
import json

from cpu_work import burn, loops_from_env

CPU_LOOPS = loops_from_env()


async def _send_json(send, status: int, obj) -> None:
    body = json.dumps(obj).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive) -> bytes:
    chunks = []
    more_body = True
    while more_body:
        message = await receive()
        chunks.append(message.get("body", b""))
        more_body = message.get("more_body", False)
    return b"".join(chunks)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return

    method = scope["method"]
    path = scope["path"]

    if path == "/hello" and method == "GET":
        await _send_json(send, 200, {"hello": "world"})
    elif path == "/sha256" and method == "POST":
        body = await _read_body(receive)
        await _send_json(send, 200, {"sha256": hashlib.sha256(body).hexdigest()})
    elif path == "/cpu" and method == "GET":
        await _send_json(send, 200, {"result": burn(CPU_LOOPS)})
    else:
        await _send_json(send, 404, {"error": "Not found"})
