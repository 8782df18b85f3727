"""The whole system on this machine, for trying Tally: `./tally-dev up`.

Starts Redis (AOF on) and PostgreSQL in temporary directories on free loopback ports, applies
the schema, creates an app, runs `tally serve` and `tally worker` logging every request, writes
an env file for the `tally` command, prints a key and a curl line, and tears everything down on
SIGINT (Ctrl-C), SIGTERM and SIGHUP (its terminal closed). It lives beside the tests because it
starts its servers with the same helpers they use.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from engine.vault.keyring import generate_key
from tests.servers import PostgresServer, RedisCluster, RedisServer, free_port, wait_for_port

ENV_FILE = Path(".tally-dev") / "env"
OPERATOR = "admin@tally.localhost"


class _Stop(Exception):
    """A signal asked the stack to stop: unwinds to the cleanup from wherever it arrives."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def main() -> None:
    # First thing: a signal during start-up must clean up what was started so far too.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)
    parser = argparse.ArgumentParser(prog="./tally-dev up", description=__doc__)
    parser.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    parser.add_argument(
        "--cluster", action="store_true",
        help="a Redis Cluster (3 masters, a replica each) and a Redis for the job queues",
    )  # fmt: skip
    args = parser.parse_args()
    redis: RedisServer | RedisCluster = (
        RedisCluster(appendonly=True) if args.cluster else RedisServer(appendonly=True)
    )
    queue = RedisServer(appendonly=True) if args.cluster else None
    postgres = PostgresServer()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        redis.start()
        if queue:
            queue.start()
        postgres.start()
        port = args.port if _port_free(args.port) else free_port()
        url = f"http://127.0.0.1:{port}"
        variables = {
            "TALLY_REDIS_URL": redis.url,
            **(
                {"TALLY_REDIS_CLUSTER": "true", "TALLY_QUEUE_REDIS_URL": queue.url} if queue else {}
            ),
            "TALLY_DATABASE_URL": postgres.url,
            "TALLY_PUBLIC_URL": url,
            # Encrypts the secrets apps store (Stripe keys, webhook secrets); thrown away with
            # the data when the stack stops.
            "TALLY_SECRET_KEY": generate_key(),
        }
        env = (
            os.environ
            | variables
            | {
                "TALLY_LOG_LEVEL": os.environ.get("TALLY_LOG_LEVEL", "info"),
                "TALLY_ACCESS_LOG": os.environ.get("TALLY_ACCESS_LOG", "true"),
            }
        )
        tally = [sys.executable, "-m", "api.cli"]
        subprocess.run([*tally, "migrate"], env=env, check=True, capture_output=True)
        created = json.loads(
            subprocess.run(
                [*tally, "apps", "create", "demo", "--json"],
                env=env, check=True, capture_output=True, text=True,
            ).stdout
        )  # fmt: skip
        operator = json.loads(
            subprocess.run(
                [*tally, "operators", "create", OPERATOR, "--json"],
                env=env, check=True, capture_output=True, text=True,
            ).stdout
        )  # fmt: skip
        serve = [*tally, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        processes.append(subprocess.Popen(serve, env=env))
        processes.append(subprocess.Popen([*tally, "worker"], env=env))
        wait_for_port(port)
        ENV_FILE.parent.mkdir(exist_ok=True)
        ENV_FILE.unlink(missing_ok=True)
        ENV_FILE.touch(mode=0o600)  # it holds the secret key
        ENV_FILE.write_text("".join(f"export {k}={v}\n" for k, v in variables.items()))
        print(_banner(url, created, operator, redis, queue, postgres), flush=True)
        signal.pause()
        while True:  # a signal other than the three above woke us: keep waiting
            signal.pause()
    except _Stop as stop:
        print(f"\n{stop}: stopping Tally and deleting its data", file=sys.stderr, flush=True)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # cleanup runs to its end
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        redis.stop()
        if queue:
            queue.stop()
        postgres.stop()
        ENV_FILE.unlink(missing_ok=True)


def _queue_line(queue: RedisServer | None) -> str:
    return f"\n  job queues   {queue.url}  (data in {queue.root})" if queue else ""


def _banner(
    url: str,
    created: dict[str, str],
    operator: dict[str, str],
    redis: RedisServer | RedisCluster,
    queue: RedisServer | None,
    postgres: PostgresServer,
) -> str:
    key = created["api_key"]
    return f"""
Tally is running.
  API          {url}
  app          {created["app_id"]}
  API key      {key}
  dashboard    {url}/dashboard/
    email      {operator["email"]}
    password   {operator["password"]}
  Redis        {redis.url}  (data in {redis.root}){_queue_line(queue)}
  PostgreSQL   {postgres.url}  (data in {postgres.root})
  secret key   TALLY_SECRET_KEY in {ENV_FILE.resolve()}  (encrypts stored secrets)

Try it:
  curl -s -X POST {url}/credits/add \\
    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
    -d '{{"user_id": "user_001", "amount": 100, "description": "Welcome credits"}}'

The same user as their browser sees them, with a client token:
  curl -s -X POST {url}/client-tokens \\
    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
    -d '{{"user_id": "user_001"}}'
  curl -s {url}/client/balance -H 'Authorization: Bearer <token from above>'

The tally command in another shell (apps, keys, webhooks, status):
  source {ENV_FILE.resolve()}
  .venv/bin/tally apps show {created["app_id"]}

Requests are logged below. Ctrl-C stops everything and deletes its data (so does closing this
terminal).
"""


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


if __name__ == "__main__":
    main()
