"""Start the worker-pool benchmark app: run_pool.py PORT NUM_WORKERS.

The worker class lives in the importable module `pool_app`, not in this
script, so that start methods which import the class by name in a fresh
process (spawn, forkserver) find it.
"""

import argparse

import pool_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int, help="TCP port on 127.0.0.1")
    parser.add_argument("num_workers", type=int, help="worker processes in the pool")
    args = parser.parse_args()
    pool_app.build_dispatcher(args.port, args.num_workers).run()


if __name__ == "__main__":
    main()
