"""The numbers the ledger's write-through runs by (see docs/write-through.md)."""

# The consumer group of every shard's outbox stream.
OUTBOX_GROUP = "persist"
# A hydration races only with another hydration or a write, both of which leave the account in
# place; a third miss in a row means something is deleting accounts under us.
HYDRATE_ATTEMPTS = 3
# A flush job runs this long at most, so one busy shard cannot starve the others.
FLUSH_BUDGET_SECONDS = 2.0
# A queued or running flush holds its shard this long at most; a worker killed mid-job
# therefore delays that shard by at most this (a restarted worker clears it at once).
FLUSH_LOCK_MS = 30_000
# With PostgreSQL down, a shard is tried again this often instead of on every sweep.
UNAVAILABLE_BACKOFF_MS = 1_000
RECONCILE_SCAN_BATCH = 1_000
# A refund marker (AccountKeys.refund_marker) stays this long once PostgreSQL has its refund:
# Credits.refund asks PostgreSQL first, so only a request already past that question needs it.
REFUND_MARKER_KEPT_SECONDS = 86_400
