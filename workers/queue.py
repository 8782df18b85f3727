"""The job queue: its name, its serializer, and every kind of job put on it.

The only module of workers/ that the API imports: the API queues jobs, workers run them.
"""

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

QUEUE = "tally"
# Outgoing webhooks have their own queue and workers: a receiver that never answers holds one
# of those for 10 s, never a flush of the ledger.
EVENTS_QUEUE = "tally-events"


class Jobs:
    """Queues jobs by name (workers.jobs.*), as JSON: a job carries ids, never objects."""

    def __init__(self, connection: Redis) -> None:
        # RQ wants a client with bytes replies.
        self.queue = Queue(QUEUE, connection=connection, serializer=JSONSerializer)
        self.events = Queue(EVENTS_QUEUE, connection=connection, serializer=JSONSerializer)

    def flush_shards(self, shards: list[int], reclaim_idle_ms: int) -> None:
        self.queue.enqueue(
            "workers.jobs.flush_shards", shards, reclaim_idle_ms, result_ttl=60, job_timeout=120
        )

    def apply_webhook_event(self, event_pk: int) -> None:
        self.queue.enqueue(
            "workers.jobs.apply_webhook_event", event_pk, result_ttl=600, job_timeout=120
        )

    def auto_top_up(self, app_id: str, user_id: str) -> None:
        self.queue.enqueue(
            "workers.jobs.auto_top_up", app_id, user_id, result_ttl=600, job_timeout=300
        )

    def deliver_events(self, claimed: list[tuple[int, str]]) -> None:
        """One job per delivery, carrying its claim: an HTTP request that may wait 10 s a read;
        the job's time limit stays below the claim a sender holds (engine.events.repository)."""
        self.events.enqueue_many(
            [
                Queue.prepare_data(
                    "workers.jobs.deliver_event", (delivery_id, claim), result_ttl=0, timeout=20
                )
                for delivery_id, claim in claimed
            ]
        )

    def reconcile_accounts(self) -> None:
        self.queue.enqueue("workers.jobs.reconcile_accounts", job_timeout=3_600)
