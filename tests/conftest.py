"""Real Redis and PostgreSQL for the whole session, started here on loopback, random ports."""

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from engine.apps import Apps
from engine.db import migrate, open_pool
from engine.repository import Repository
from engine.settings import Settings
from tests.servers import PostgresServer, RedisServer, free_port, wait_for_port


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def settings(redis_server: RedisServer, postgres_server: PostgresServer) -> Settings:
    settings = Settings(redis_url=redis_server.url, database_url=postgres_server.url)
    pool = open_pool(settings.database_url, 1, wait=True)
    migrate(pool)
    pool.close()
    return settings


@pytest.fixture(scope="session")
def repository(settings: Settings) -> Iterator[Repository]:
    pool = open_pool(settings.database_url, 4, wait=True)
    yield Repository(pool)
    pool.close()


def tally_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "TALLY_REDIS_URL": settings.redis_url,
        "TALLY_DATABASE_URL": settings.database_url,
        "TALLY_LOG_LEVEL": "warning",
    }


def tally(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the `tally` command as an operator would."""
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        env=tally_env(settings),
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
    )


class ApiServer:
    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--port", str(self.port), "--workers", "1"],
            env=env,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


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
def test_app(repository: Repository) -> AppUnderTest:
    """A fresh app per test: tenants are isolated, so tests cannot see each other's users."""
    app, new_key = Apps(repository).create("test")
    return AppUnderTest(app.app_id, new_key.api_key, new_key.key.key_id)


@pytest.fixture
def client(api_server: ApiServer, test_app: AppUnderTest) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {test_app.api_key}"}
    with httpx.Client(base_url=api_server.url, headers=headers, timeout=30) as client:
        yield client
