"""What one API process holds for its lifetime: settings, clients and the engine."""

import asyncio
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from psycopg_pool import ConnectionPool
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from rq import Queue
from rq.serializers import JSONSerializer
from starlette.requests import Request

from api.auth import AppCache, KeyCache
from engine.apps import Apps
from engine.auto_top_up import AutoTopUps
from engine.billing_repository import BillingRepository
from engine.credits import Credits
from engine.db import open_pool
from engine.purchases import Purchases
from engine.redis_client import hot_path_redis
from engine.repository import Repository
from engine.settings import Settings
from engine.webhook_repository import WebhookRepository
from engine.webhooks import Webhooks
from workers.runner import QUEUE

T = TypeVar("T")

# Stripe calls take up to seconds and block a thread each: they get threads of their own, so
# that slow payments never hold up the hot path's key lookups.
_BILLING_THREADS = 16


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    redis: "Redis"
    sync_redis: "SyncRedis"  # for the few calls made from threads (health)
    pool: ConnectionPool
    credits: Credits
    auth: KeyCache
    webhooks: Webhooks
    queue: Queue
    apps: Apps
    apps_cache: AppCache
    billing_pool: ConnectionPool
    billing_threads: ThreadPoolExecutor
    purchases: Purchases
    top_ups: AutoTopUps

    @classmethod
    def start(cls, settings: Settings) -> "Services":
        """Build everything; called on the event loop that serves requests."""
        redis = hot_path_redis(settings.redis_url, settings.redis_max_connections)
        pool = open_pool(settings.database_url, settings.database_pool_size)
        repository = Repository(pool)
        raw_redis = SyncRedis.from_url(settings.redis_url, socket_timeout=2)
        sync_redis = SyncRedis.from_url(settings.redis_url, decode_responses=True, socket_timeout=2)
        credits = Credits(redis, repository, settings)
        loop = asyncio.get_running_loop()

        def run_credits(work: Callable[[Credits], Coroutine[Any, Any, T]]) -> T:
            # Billing threads borrow the loop's Redis client instead of opening their own.
            return asyncio.run_coroutine_threadsafe(work(credits), loop).result(timeout=30)

        # A purchase holds a payment's lock on one connection while its credit may hydrate the
        # account on another: separate pools, so purchases cannot starve the hot path's.
        billing_pool = open_pool(settings.database_url, settings.database_pool_size)
        billing = BillingRepository(billing_pool)
        purchases = Purchases(
            billing, WebhookRepository(billing_pool), sync_redis, settings, run_credits
        )
        return cls(
            settings=settings,
            redis=redis,
            sync_redis=sync_redis,
            pool=pool,
            credits=credits,
            auth=KeyCache(repository, settings.auth_cache_seconds),
            webhooks=Webhooks(repository, WebhookRepository(pool)),
            queue=Queue(QUEUE, connection=raw_redis, serializer=JSONSerializer),
            apps=Apps(repository),
            apps_cache=AppCache(repository, settings.auth_cache_seconds),
            billing_pool=billing_pool,
            billing_threads=ThreadPoolExecutor(_BILLING_THREADS, thread_name_prefix="billing"),
            purchases=purchases,
            top_ups=AutoTopUps(billing, repository, purchases, sync_redis, settings, run_credits),
        )

    async def billing(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking billing call (PostgreSQL, Stripe) on the billing threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.billing_threads, partial(call, *args, **kwargs))

    async def close(self) -> None:
        self.billing_threads.shutdown(wait=False, cancel_futures=True)
        await self.redis.aclose()
        self.sync_redis.close()
        self.queue.connection.close()
        self.pool.close()
        self.billing_pool.close()


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc
