"""Everything a Tally process holds, built in one place: `Engine.build(settings)`.

The API, the worker, the CLI and the benchmarks all start here, so every client, pool and
service exists once per process and is wired the same way everywhere.
"""

import asyncio
import os
import socket
from dataclasses import dataclass

from psycopg_pool import ConnectionPool
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from engine.accounts.apps import Apps
from engine.accounts.auth import AppCache, KeyCache
from engine.accounts.rate_limits import RateLimiter
from engine.accounts.repository import AppRepository
from engine.audit.log import AuditLog
from engine.billing.auto_top_up import AutoTopUps
from engine.billing.purchases import Purchases
from engine.billing.repository import BillingRepository
from engine.bridge import Bridge
from engine.events.deliveries import Deliveries
from engine.events.endpoints import Endpoints
from engine.events.repository import EventRepository
from engine.events.watch import Watches
from engine.holds.service import Holds
from engine.ledger.credits import Credits
from engine.ledger.outbox import OutboxWriter
from engine.ledger.reconcile import Report, reconcile
from engine.ledger.repository import LedgerRepository
from engine.ledger.summaries import Summaries
from engine.operators.repository import OperatorRepository
from engine.operators.service import Operators
from engine.payments.repository import WebhookRepository
from engine.payments.service import Webhooks
from engine.plans.repository import PlanRepository
from engine.plans.usage import Plans
from engine.settings import Settings
from engine.store.db import open_pool
from engine.store.pipelined import Calls
from engine.store.redis import async_client, pipelined_client, sync_client
from engine.vault.keyring import Keyring, keyring

# A top-up holds its user's lock, its purchase and its payment's lock on three connections at
# once while the worker's sweeper needs a fourth; more would wait, never deadlock.
_BILLING_CONNECTIONS = 6


@dataclass(frozen=True, slots=True)
class Engine:
    settings: Settings
    keyring: Keyring
    bridge: Bridge
    redis: AsyncRedis  # the hot path's, used on the bridge's loop
    calls: Calls  # its script calls, auto-pipelined on one connection per node
    sync_redis: Redis  # for blocking code: workers, health, billing
    raw_redis: Redis  # bytes replies, for RQ: its queues' Redis (settings.queue_url)
    pool: ConnectionPool  # the hot path's: key lookups, ledger reads, hydration
    # Billing holds a payment's lock on one connection while its credit may hydrate the
    # account on another: separate pools, so billing cannot starve the hot path.
    billing_pool: ConnectionPool
    ledger: LedgerRepository
    app_repository: AppRepository
    credits: Credits
    holds: Holds
    outbox: OutboxWriter
    apps: Apps
    keys: KeyCache
    app_cache: AppCache
    # API keys' and end users' rate limits: this process's buckets, its share of each.
    rate_limiter: RateLimiter
    webhooks: Webhooks
    purchases: Purchases
    top_ups: AutoTopUps
    # The dashboard's, on the billing pool: an operator's page never holds up the hot path.
    operators: Operators
    audit: AuditLog
    summaries: Summaries
    # Events out, on the billing pool: sending them never takes the hot path's connections.
    endpoints: Endpoints
    deliveries: Deliveries
    plans: Plans
    # The thresholds the scripts watch, by app, for blocking code (the worker's expiry sweep).
    watch_of: Watches

    @classmethod
    def build(cls, settings: Settings, loop: asyncio.AbstractEventLoop | None = None) -> "Engine":
        """Build everything. `loop`: the event loop the process serves on, if it has one."""
        ring = keyring(settings)
        bridge = Bridge(loop)
        cluster = settings.redis_cluster
        redis = async_client(settings.redis_url, settings.redis_max_connections, cluster=cluster)
        sync_redis = sync_client(settings.redis_url, cluster=cluster)
        pool = open_pool(settings.database_url, settings.database_pool_size)
        billing_pool = open_pool(
            settings.database_url, max(settings.database_pool_size, _BILLING_CONNECTIONS)
        )
        ledger = LedgerRepository(pool)
        app_repository = AppRepository(pool, ring)
        calls = pipelined_client(settings.redis_url, redis if cluster else None)
        credits = Credits(redis, calls, ledger, bridge, settings)
        billing = BillingRepository(billing_pool)
        events = WebhookRepository(billing_pool)
        billing_apps = AppRepository(billing_pool, ring)
        purchases = Purchases(billing, events, sync_redis, credits, bridge, settings)
        consumer = f"{socket.gethostname()}-{os.getpid()}"
        outgoing = EventRepository(billing_pool, ring)
        return cls(
            settings=settings,
            keyring=ring,
            bridge=bridge,
            redis=redis,
            calls=calls,
            sync_redis=sync_redis,
            raw_redis=sync_client(settings.queue_url, decode=False),
            pool=pool,
            billing_pool=billing_pool,
            ledger=ledger,
            app_repository=app_repository,
            credits=credits,
            holds=Holds(redis, credits, ledger, bridge, settings),
            outbox=OutboxWriter(
                sync_redis, ledger, consumer, settings.outbox_batch_size, credits.hydration.acks
            ),
            apps=Apps(app_repository),
            keys=KeyCache(app_repository, bridge, settings.auth_cache_seconds),
            app_cache=AppCache(app_repository, bridge, settings.auth_cache_seconds),
            rate_limiter=RateLimiter(settings.rate_limit_processes),
            webhooks=Webhooks(billing_apps, events, credits, bridge),
            purchases=purchases,
            top_ups=AutoTopUps(
                billing, billing_apps, purchases, sync_redis, credits, bridge, settings
            ),
            endpoints=Endpoints(outgoing),
            deliveries=Deliveries(outgoing, settings.event_retry_base_seconds),
            watch_of=Watches(app_repository.get_app),
            plans=Plans(sync_redis, PlanRepository(billing_pool), LedgerRepository(billing_pool)),
            operators=Operators(OperatorRepository(billing_pool)),
            audit=AuditLog(billing_pool),
            summaries=Summaries(billing_pool),
        )

    def reconcile(self, *, repair: bool = False) -> Report:
        """Compare every Redis balance with the ledger (the worker's job, `tally reconcile`)."""
        return reconcile(self.sync_redis, self.ledger, repair=repair)

    def close(self) -> None:
        """From a thread: the worker, the CLI. The API closes with aclose(), on its loop."""
        self.bridge.run(self.aclose_async())
        self._close_blocking()

    async def aclose(self) -> None:
        await self.aclose_async()
        self._close_blocking()

    async def aclose_async(self) -> None:
        await self.calls.aclose()
        await self.redis.aclose()

    def _close_blocking(self) -> None:
        self.sync_redis.close()
        self.raw_redis.close()
        self.pool.close()
        self.billing_pool.close()
        self.bridge.close()
