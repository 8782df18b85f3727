"""What a worker process holds: built once per process, on first use by a job."""

import asyncio
import os
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from engine.auto_top_up import AutoTopUps
from engine.billing_repository import BillingRepository
from engine.credits import Credits
from engine.db import open_pool
from engine.outbox import OutboxWriter
from engine.purchases import CreditsRunner, Purchases
from engine.redis_client import worker_redis
from engine.repository import Repository
from engine.settings import Settings
from engine.webhook_repository import WebhookRepository
from engine.webhooks import Webhooks

T = TypeVar("T")

# A top-up holds its user's lock and a payment's lock on two connections while crediting may
# hydrate the account on a third; the sweeper thread needs one too.
_POOL_SIZE = 6


@dataclass(frozen=True)
class Context:
    settings: Settings
    redis: "Redis"
    repository: Repository
    outbox: OutboxWriter
    webhooks: Webhooks
    top_ups: AutoTopUps


def credits_runner(settings: Settings, repository: Repository) -> CreditsRunner:
    """Async engine work from a job: on a fresh event loop with its own Redis client."""

    def run(work: Callable[[Credits], Coroutine[Any, Any, T]]) -> T:
        async def with_credits() -> T:
            redis = AsyncRedis.from_url(settings.redis_url, decode_responses=True)
            try:
                return await work(Credits(redis, repository, settings))
            finally:
                await redis.aclose()

        return asyncio.run(with_credits())

    return run


@cache
def context() -> Context:
    settings = Settings()
    redis = worker_redis(settings.redis_url)
    pool = open_pool(settings.database_url, _POOL_SIZE)
    repository = Repository(pool)
    consumer = f"{socket.gethostname()}-{os.getpid()}"
    outbox = OutboxWriter(redis, repository, consumer, settings.outbox_batch_size)
    events = WebhookRepository(pool)
    billing = BillingRepository(pool)
    run = credits_runner(settings, repository)
    purchases = Purchases(billing, events, redis, settings, run)
    top_ups = AutoTopUps(billing, repository, purchases, redis, settings, run)
    return Context(settings, redis, repository, outbox, Webhooks(repository, events), top_ups)
