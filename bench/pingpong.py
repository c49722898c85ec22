"""Time a round trip between two processes over a socketpair.

At one connection, workgate's hop from the dispatcher to a worker and back
is one such round trip per request, so this shows the floor that the
machine sets for workload 4. Run it as is, then pinned to one CPU, and
compare:

    python3 bench/pingpong.py
    taskset -c 0 python3 bench/pingpong.py
"""

import os
import selectors
import socket
import sys
import time

ROUND_TRIPS = 20_000
MESSAGE = b"x" * 60


def echo(sock: socket.socket) -> None:
    """Send back what arrives until EOF, waiting in a selector like a worker."""
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    while True:
        selector.select(1.0)
        data = sock.recv(4096)
        if not data:
            return
        sock.sendall(data)


def main() -> None:
    parent_end, child_end = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        parent_end.close()
        echo(child_end)
        os._exit(0)

    child_end.close()
    started = time.perf_counter()
    for _ in range(ROUND_TRIPS):
        parent_end.sendall(MESSAGE)
        received = 0
        while received < len(MESSAGE):
            received += len(parent_end.recv(4096))
    elapsed = time.perf_counter() - started
    parent_end.close()
    os.waitpid(pid, 0)
    print(f"{elapsed / ROUND_TRIPS * 1e6:.1f} us per round trip "
          f"({ROUND_TRIPS} round trips, pid {os.getpid()}, {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
