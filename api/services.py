"""What one API process holds for its lifetime: settings, clients and the engine."""

from dataclasses import dataclass

from psycopg_pool import ConnectionPool
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from rq import Queue
from rq.serializers import JSONSerializer
from starlette.requests import Request

from api.auth import KeyCache
from engine.apps import Apps
from engine.credits import Credits
from engine.db import open_pool
from engine.redis_client import hot_path_redis
from engine.repository import Repository
from engine.settings import Settings
from engine.webhook_repository import WebhookRepository
from engine.webhooks import Webhooks
from workers.runner import QUEUE


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

    @classmethod
    def start(cls, settings: Settings) -> "Services":
        redis = hot_path_redis(settings.redis_url, settings.redis_max_connections)
        pool = open_pool(settings.database_url, settings.database_pool_size)
        repository = Repository(pool)
        raw_redis = SyncRedis.from_url(settings.redis_url, socket_timeout=2)
        return cls(
            settings=settings,
            redis=redis,
            sync_redis=SyncRedis.from_url(
                settings.redis_url, decode_responses=True, socket_timeout=2
            ),
            pool=pool,
            credits=Credits(redis, repository, settings),
            auth=KeyCache(repository, settings.auth_cache_seconds),
            webhooks=Webhooks(repository, WebhookRepository(pool)),
            queue=Queue(QUEUE, connection=raw_redis, serializer=JSONSerializer),
            apps=Apps(repository),
        )

    async def close(self) -> None:
        await self.redis.aclose()
        self.sync_redis.close()
        self.queue.connection.close()
        self.pool.close()


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc
