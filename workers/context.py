"""What a worker process holds: built once per process, on first use by a job."""

import os
import socket
from dataclasses import dataclass
from functools import cache

from redis import Redis

from engine.db import open_pool
from engine.outbox import OutboxWriter
from engine.redis_client import worker_redis
from engine.repository import Repository
from engine.settings import Settings
from engine.webhook_repository import WebhookRepository
from engine.webhooks import Webhooks


@dataclass(frozen=True)
class Context:
    settings: Settings
    redis: "Redis"
    repository: Repository
    outbox: OutboxWriter
    webhooks: Webhooks


@cache
def context() -> Context:
    settings = Settings()
    redis = worker_redis(settings.redis_url)
    pool = open_pool(settings.database_url, 3)
    repository = Repository(pool)
    consumer = f"{socket.gethostname()}-{os.getpid()}"
    outbox = OutboxWriter(redis, repository, consumer, settings.outbox_batch_size)
    webhooks = Webhooks(repository, WebhookRepository(pool))
    return Context(settings, redis, repository, outbox, webhooks)
