"""The whole system on this machine, for trying Tally: `bash .ci/up`.

Starts Redis (AOF on) and PostgreSQL in a temporary directory on free loopback ports, applies
the schema, creates an app, runs `tally serve` and `tally worker`, prints a key and a curl line,
and tears everything down on Ctrl-C.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading

from tests.servers import PostgresServer, RedisServer, free_port, wait_for_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    args = parser.parse_args()
    redis = RedisServer(appendonly=True)
    postgres = PostgresServer()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        redis.start()
        postgres.start()
        port = args.port if _port_free(args.port) else free_port()
        env = os.environ | {
            "TALLY_REDIS_URL": redis.url,
            "TALLY_DATABASE_URL": postgres.url,
            "TALLY_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "TALLY_LOG_LEVEL": os.environ.get("TALLY_LOG_LEVEL", "warning"),
        }
        tally = [sys.executable, "-m", "api.cli"]
        subprocess.run([*tally, "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
        created = json.loads(
            subprocess.run(
                [*tally, "apps", "create", "demo", "--json"],
                env=env, check=True, capture_output=True, text=True,
            ).stdout
        )  # fmt: skip
        serve = [*tally, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        processes.append(subprocess.Popen(serve, env=env))
        processes.append(subprocess.Popen([*tally, "worker"], env=env))
        wait_for_port(port)
        key = created["api_key"]
        print(
            f"""
Tally is running.
  API          http://127.0.0.1:{port}
  app          {created["app_id"]}
  API key      {key}
  Redis        {redis.url}
  PostgreSQL   {postgres.url}

Try it:
  curl -s -X POST http://127.0.0.1:{port}/credits/add \\
    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
    -d '{{"user_id": "user_001", "amount": 100, "description": "Welcome credits"}}'

The same user as their browser sees them, with a client token:
  curl -s -X POST http://127.0.0.1:{port}/client-tokens \\
    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
    -d '{{"user_id": "user_001"}}'
  curl -s http://127.0.0.1:{port}/client/balance -H 'Authorization: Bearer <token from above>'

Environment for the tally command in another shell:
  export TALLY_REDIS_URL={redis.url} TALLY_DATABASE_URL={postgres.url}

Ctrl-C stops everything and deletes its data.
""",
            flush=True,
        )
        _wait_for_ctrl_c()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()
        redis.stop()
        postgres.stop()


def _wait_for_ctrl_c() -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


if __name__ == "__main__":
    main()
