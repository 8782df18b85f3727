"""Real Redis and PostgreSQL for the whole session, started here on loopback, random ports."""

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr

from engine.accounts.apps import Apps
from engine.accounts.repository import AppRepository
from engine.settings import Settings
from engine.store.db import migrate, open_pool
from engine.store.redis import sync_client
from engine.vault.keyring import generate_key, keyring
from tests.servers import (
    CREATED,
    LocalStripe,
    PostgresServer,
    RedisCluster,
    RedisServer,
    free_port,
    wait_for_port,
)

# Seals the secrets the suite stores; tests of the key itself make their own.
SECRET_KEY = SecretStr(generate_key())
# Auto top-up waits this long after a failed round (then twice as long) in the tests.
RETRY_SECONDS = 0.5


@pytest.fixture(scope="session", autouse=True)
def leaves_nothing_behind() -> Iterator[None]:
    """The suite's servers live in temporary directories: none may outlive the run."""
    yield
    left = [str(path) for path in CREATED if path.exists()]
    assert not left, f"the test suite left {left} behind"


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


# TALLY_TEST_REDIS=cluster runs the suite's Redis as a Redis Cluster (3 masters, 3 replicas),
# with a plain Redis beside it for the job queues: tests/run's second pass.
ON_CLUSTER = os.environ.get("TALLY_TEST_REDIS") == "cluster"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | RedisCluster]:
    server = RedisCluster().start() if ON_CLUSTER else RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    """A plain redis-server of the module's own, whatever the suite runs on: for tests of the
    scripts and connections themselves, which flush it at will."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def queue_redis() -> Iterator[RedisServer | None]:
    """The job queues' own Redis, on a cluster only (RQ's keys cannot live on one)."""
    if not ON_CLUSTER:
        yield None
        return
    server = RedisServer().start()
    yield server
    server.stop()


def redis_of(settings: Settings, *, decode: bool = False) -> redis.Redis:
    """A client of the suite's Redis, made as Tally makes its own: a cluster client on one."""
    return sync_client(settings.redis_url, decode=decode, cluster=settings.redis_cluster)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def localstripe() -> Iterator[LocalStripe]:
    server = LocalStripe().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def settings(
    redis_server: RedisServer | RedisCluster,
    queue_redis: RedisServer | None,
    postgres_server: PostgresServer,
    localstripe: LocalStripe,
) -> Settings:
    settings = Settings(
        redis_url=redis_server.url,
        redis_cluster=ON_CLUSTER,
        queue_redis_url=queue_redis.url if queue_redis else None,
        database_url=postgres_server.url,
        stripe_api_base=localstripe.url,
        auto_top_up_retry_seconds=RETRY_SECONDS,
        secret_key=SECRET_KEY,
    )
    pool = open_pool(settings.database_url, 1, wait=True)
    migrate(pool)
    pool.close()
    return settings


@pytest.fixture(scope="session")
def repository(settings: Settings) -> Iterator[AppRepository]:
    pool = open_pool(settings.database_url, 4, wait=True)
    yield AppRepository(pool, keyring(settings))
    pool.close()


def readme_example(language: str) -> str:
    """The README's quickstart in `language`, exactly as written there: the tests run it."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    marker = f"<!-- quickstart:{language} -->\n```{language}\n"
    start = text.index(marker) + len(marker)
    return text[start : text.index("```", start)]


def tally_env(settings: Settings) -> dict[str, str]:
    key = settings.secret_key
    return {
        **os.environ,
        **({"TALLY_SECRET_KEY": key.get_secret_value()} if key else {}),
        "TALLY_REDIS_URL": settings.redis_url,
        "TALLY_REDIS_CLUSTER": str(settings.redis_cluster).lower(),
        "TALLY_REDIS_WAIT_REPLICAS": str(settings.redis_wait_replicas),
        "TALLY_REDIS_WAIT_TIMEOUT_MS": str(settings.redis_wait_timeout_ms),
        **({"TALLY_QUEUE_REDIS_URL": settings.queue_redis_url} if settings.queue_redis_url else {}),
        "TALLY_DATABASE_URL": settings.database_url,
        "TALLY_LOG_LEVEL": "warning",
        # Workers in tests take over a killed writer's entries quickly and sweep often.
        "TALLY_OUTBOX_RECLAIM_MS": "500",
        "TALLY_OUTBOX_SWEEP_MS": "20",
        "TALLY_RECONCILE_INTERVAL_SECONDS": "0",
        # Workers run side by side in tests: one listening on the default port is enough.
        "TALLY_METRICS_PORT": "0",
        "TALLY_STRIPE_API_BASE": settings.stripe_api_base,
        "TALLY_AUTO_TOP_UP_RETRY_SECONDS": str(settings.auto_top_up_retry_seconds),
    }


def tally(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the `tally` command as an operator would."""
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        env=tally_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and done.returncode:
        raise AssertionError(f"tally {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done


class TallyProcess:
    """A long-running `tally` command, killable like a crash; its output goes to `log` if given."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path | None = None) -> None:
        self._log = log.open("ab") if log else None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "api.cli", *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT if log else None,
        )

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()
        if self._log:
            self._log.close()


class ApiServer(TallyProcess):
    def __init__(self, env: dict[str, str], log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(["serve", "--port", str(self.port), "--workers", "1"], env, log)
        wait_for_port(self.port)


class WorkerProcess(TallyProcess):
    def __init__(self, env: dict[str, str], log: Path | None = None) -> None:
        super().__init__(["worker"], env, log)


def fire(
    url: str, api_key: str, requests: list[tuple[str, dict[str, Any]]], **extra_headers: str
) -> list[httpx.Response]:
    """POST concurrently, 64 in flight at a time (httpx slows down with longer queues)."""

    async def run() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {api_key}"} | extra_headers
        gate = asyncio.Semaphore(64)
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:

            async def send(path: str, body: dict[str, Any]) -> httpx.Response:
                async with gate:
                    return await client.post(path, json=body)

            return await asyncio.gather(*(send(path, body) for path, body in requests))

    return asyncio.run(run())


def drain(settings: Settings) -> None:
    """Persist everything in the outboxes, as an operator would: `tally worker --burst`."""
    tally(settings, "worker", "--burst")


@pytest.fixture(scope="session")
def api_server(settings: Settings) -> Iterator[ApiServer]:
    server = ApiServer(tally_env(settings))
    yield server
    server.stop()


@dataclass(frozen=True)
class AppUnderTest:
    app_id: str
    api_key: str
    key_id: str


@pytest.fixture
def test_app(repository: AppRepository) -> AppUnderTest:
    """A fresh app per test: tenants are isolated, so tests cannot see each other's users."""
    app, new_key = Apps(repository).create("test")
    return AppUnderTest(app.app_id, new_key.api_key, new_key.key.key_id)


@pytest.fixture
def client(api_server: ApiServer, test_app: AppUnderTest) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {test_app.api_key}"}
    with httpx.Client(base_url=api_server.url, headers=headers, timeout=30) as client:
        yield client


@dataclass
class PrivateStack:
    redis: RedisServer
    api: ApiServer
    api_key: str


@pytest.fixture
def private_stack() -> Iterator[PrivateStack]:
    """Redis, PostgreSQL and an API of this test's own: its Redis goes down."""
    redis_server = RedisServer().start()
    postgres = PostgresServer().start()
    api = None
    try:
        settings = Settings(
            redis_url=redis_server.url, database_url=postgres.url, secret_key=SECRET_KEY
        )
        pool = open_pool(settings.database_url, 1, wait=True)
        migrate(pool)
        _, new_key = Apps(AppRepository(pool, keyring(settings))).create("private")
        pool.close()
        api = ApiServer(tally_env(settings))
        yield PrivateStack(redis_server, api, new_key.api_key)
    finally:
        if api:
            api.stop()
        redis_server.stop()
        postgres.stop()
