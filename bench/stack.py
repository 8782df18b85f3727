"""The servers a benchmark run starts: Redis (AOF on), PostgreSQL, and the HTTP apps."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import psycopg
from pydantic import SecretStr

from engine.container import Engine
from engine.models import AppContext, Operation
from engine.settings import Settings
from engine.store.db import migrate
from engine.store.redis import sync_client
from engine.vault.keyring import generate_key
from tests.servers import PostgresServer, RedisCluster, RedisServer, free_port, wait_for_port

USERS = 10_000
FUNDS = 10**12  # per user: no run can drain it


@dataclass
class Stack:
    redis: RedisServer | RedisCluster
    postgres: PostgresServer
    settings: Settings
    app: AppContext
    api_key: str
    # An app with low-balance thresholds, a webhook endpoint and a rate limit on its key: what
    # those features cost a deduct when they are configured (issue: within 5%).
    configured_key: str

    def env(self) -> dict[str, str]:
        return os.environ | {
            "TALLY_REDIS_URL": self.settings.redis_url,
            "TALLY_REDIS_CLUSTER": str(self.settings.redis_cluster).lower(),
            "TALLY_QUEUE_REDIS_URL": self.settings.queue_url,
            "TALLY_REDIS_WAIT_REPLICAS": str(self.settings.redis_wait_replicas),
            "TALLY_DATABASE_URL": self.settings.database_url,
            "TALLY_LOG_LEVEL": "warning",
            # The configured app's endpoint secret is stored encrypted.
            "TALLY_SECRET_KEY": self.settings.secret_key.get_secret_value()
            if self.settings.secret_key
            else "",
            "PEER_KEY": self.api_key,
        }


@contextmanager
def stack(*, cluster: bool = False, wait_replicas: int = 0) -> Iterator[Stack]:
    """Redis (AOF on; a Redis Cluster of 3 masters and 3 replicas with `cluster`, or with
    `wait_replicas` a replica of the one Redis that every write waits for) and PostgreSQL."""
    redis_server: RedisServer | RedisCluster = (
        RedisCluster(appendonly=True) if cluster else RedisServer(appendonly=True)
    ).start()
    queue = RedisServer().start() if cluster else None
    replica = RedisServer(appendonly=True).start() if wait_replicas and not cluster else None
    if replica:
        link = sync_client(replica.url)
        link.replicaof("127.0.0.1", redis_server.port)  # type: ignore[union-attr]
        while link.info("replication")["master_link_status"] != "up":
            time.sleep(0.05)
    postgres = PostgresServer().start()
    try:
        settings = Settings(
            redis_url=redis_server.url,
            redis_cluster=cluster,
            queue_redis_url=queue.url if queue else None,
            redis_wait_replicas=wait_replicas,
            database_url=postgres.url,
            secret_key=SecretStr(generate_key()),
        )
        engine = Engine.build(settings)
        try:
            migrate(engine.pool)
            app, key = engine.apps.create("bench")
            context = AppContext(app.app_id, 0)
            _fund(engine, context)
            configured_key = _configured(engine)
        finally:
            engine.close()
        _fund_peers(settings)
        yield Stack(redis_server, postgres, settings, context, key.api_key, configured_key)
    finally:
        redis_server.stop()
        for extra in (queue, replica):
            if extra:
                extra.stop()
        postgres.stop()


def _configured(engine: Engine) -> str:
    """An app with thresholds, an endpoint and a rate limit no run reaches; its key."""
    app, _ = engine.apps.create("bench-configured")
    engine.apps.update(app.app_id, {"low_balance_thresholds": [500, 100, 0]})
    # The events the thresholds make: the funding's 10,001 credits.added events, sent to an
    # endpoint that never answers, would keep every worker of every run busy retrying them.
    engine.endpoints.create(
        app.app_id, "http://127.0.0.1:9/hooks", ["balance.low", "balance.depleted"]
    )
    _fund(engine, AppContext(app.app_id, 0))
    return engine.apps.create_key(app.app_id, rate_limit=1_000_000).api_key


def _fund(engine: Engine, app: AppContext) -> None:
    users = ["hot", *(f"u{i}" for i in range(1, USERS + 1))]
    for start in range(0, len(users), 1000):
        ops = [Operation("add", user, FUNDS) for user in users[start : start + 1000]]
        engine.bridge.run(engine.credits.batch(app, ops))


def _fund_peers(settings: Settings) -> None:
    from bench.apps.pg_peer import SCHEMA

    users = ["hot", *(f"u{i}" for i in range(1, USERS + 1))]
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(SCHEMA)
        with conn.cursor().copy("COPY peer_accounts FROM STDIN") as copy:
            for user in users:
                copy.write_row((user, FUNDS, "now"))
    floor = sync_client(settings.redis_url, cluster=settings.redis_cluster)
    pipe = floor.pipeline(transaction=False)
    for user in users:
        pipe.hset(f"floor:{{{user}}}", "balance", FUNDS)
    pipe.execute()


@contextmanager
def server(
    kind: str, stack: Stack, workers: int, env: dict[str, str] | None = None
) -> Iterator[str]:
    """Serve `kind` (tally, floor or peer) with the same uvicorn settings; yield its URL."""
    port = free_port()
    if kind == "tally":
        command = [sys.executable, "-m", "api.cli", "serve", "--workers", str(workers)]
    else:
        command = [
            sys.executable, "-m", "uvicorn", f"bench.apps.{kind}:create_app", "--factory",
            "--workers", str(workers), "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)], env=stack.env() | (env or {})
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)


@contextmanager
def worker(stack: Stack) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-m", "api.cli", "worker"], env=stack.env())
    try:
        yield process
    finally:
        process.terminate()
        process.wait(30)


def burst(stack: Stack) -> None:
    subprocess.run(
        [sys.executable, "-m", "api.cli", "worker", "--burst"], env=stack.env(), check=True
    )


def lag_since(stack: Stack, since: datetime) -> tuple[float, float, int]:
    """Write-through lag of the entries made since `since`, from the API's write to the
    worker's COMMIT (persisted_at - created_at): p50 and p99 in ms, and how many entries."""
    with psycopg.connect(stack.settings.database_url) as conn:
        row = conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag),"
            " percentile_cont(0.99) WITHIN GROUP (ORDER BY lag), count(*)"
            " FROM (SELECT extract(epoch FROM persisted_at - created_at) * 1000 AS lag"
            "  FROM ledger_entries WHERE created_at >= %s) t",
            (since,),
        ).fetchone()
    assert row is not None
    return float(row[0] or 0), float(row[1] or 0), int(row[2])
