from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob Tally has, read from `TALLY_*` environment variables at process entry."""

    model_config = SettingsConfigDict(env_prefix="TALLY_", frozen=True)

    # One Redis, or with redis_cluster any node of a Redis Cluster (or several, comma-separated).
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False
    # Where RQ keeps the workers' job queues. RQ's keys cannot live on a cluster: with one, a
    # plain Redis of its own is required; without, the same Redis by default.
    queue_redis_url: str | None = None
    # Replicas that must have a write before it is acknowledged (WAIT, in the script call's
    # round trip); none confirming within the timeout is a 503, outcome unknown.
    redis_wait_replicas: int = Field(default=0, ge=0)
    # Below the clients' 5 s read timeout, which would end the wait as a lost connection.
    redis_wait_timeout_ms: int = Field(default=500, ge=1, le=4_000)
    database_url: str = "postgresql://postgres@127.0.0.1:5432/tally"
    # Base URL printed in front of webhook paths; empty prints bare paths.
    public_url: str = ""
    # The IETF Idempotency-Key draft and Stripe both promise at least a day.
    idempotency_ttl_seconds: int = Field(default=86_400, ge=86_400)
    # An account no request has written (or needed rebuilt) for this long leaves Redis; the
    # ledger rebuilds it when it is next used (docs/operations.md#redis-memory). 0: never.
    account_idle_seconds: int = Field(default=604_800, ge=0)
    # How stale an API key lookup may be: bounds how long a revoked key keeps working.
    auth_cache_seconds: float = Field(default=0.8, ge=0, le=1)
    max_body_bytes: int = Field(default=65_536, ge=1_024)
    redis_max_connections: int = Field(default=256, ge=1)
    database_pool_size: int = Field(default=4, ge=1)
    log_level: str = "info"
    # One log line per request, at info: for development (./tally-dev up), off in production.
    access_log: bool = False
    # Where `tally worker` serves GET /metrics (the API serves it on its own port); 0: nowhere.
    # Loopback by default: metrics name apps and volumes, and need no key.
    metrics_port: int = Field(default=9464, ge=0, le=65_535)
    metrics_host: str = "127.0.0.1"
    # Where Stripe's API is: a Stripe-compatible fake (localstripe) in tests.
    stripe_api_base: str = "https://api.stripe.com"
    # Auto top-up retries a failed top-up after this, then twice as long (docs/end-users.md).
    auto_top_up_retry_seconds: float = Field(default=3_600, gt=0)
    # Requests per second each end user's client tokens may make, bursts twice that; 0: none.
    client_rate_limit: float = Field(default=20, ge=0)
    # How many API processes share each rate limit, each allowing that fraction of it
    # (docs/operations.md#rate-limits); `tally serve` sets it to its --workers unless given.
    rate_limit_processes: int = Field(default=1, ge=1)

    # Seals the secrets Tally stores (docs/operations.md#the-secret-key): 32 bytes in base64,
    # given directly or as a file. The previous key still opens values during a rotation.
    secret_key: SecretStr | None = None
    secret_key_file: str | None = None
    secret_key_previous: SecretStr | None = None
    secret_key_previous_file: str | None = None

    # Outgoing webhooks (docs/events.md): the first retry's wait, doubling after each failure.
    event_retry_base_seconds: float = Field(default=5.0, gt=0)
    # Threads of `tally worker` sending events: a slow receiver holds one for up to 10 s.
    event_delivery_threads: int = Field(default=4, ge=1, le=64)

    # Write-through to PostgreSQL (see docs/write-through.md).
    outbox_batch_size: int = Field(default=1_000, ge=1, le=10_000)
    # How long an entry may sit unacknowledged with one writer before another takes it over.
    outbox_reclaim_ms: int = Field(default=30_000, ge=100)
    outbox_sweep_ms: int = Field(default=50, ge=5)
    reconcile_interval_seconds: int = Field(default=3_600, ge=0)  # 0: never scheduled

    @model_validator(mode="after")
    def _queue_off_the_cluster(self) -> "Settings":
        if self.redis_cluster and not self.queue_redis_url:
            raise ValueError(
                "TALLY_REDIS_CLUSTER needs TALLY_QUEUE_REDIS_URL: a plain Redis for the job"
                " queues (RQ's keys cannot live on a cluster)"
            )
        return self

    @property
    def queue_url(self) -> str:
        return self.queue_redis_url or self.redis_url
