"""The one place Redis key names are built.

Every key of one account lives under the hash tag of the account's shard, and each shard's outbox
stream carries the same tag, so a script touching an account, its idempotency record, its recent
list and the outbox stays inside one Redis Cluster slot. The tag is the first `{...}` of the key,
which is why it comes before any caller-supplied text.
"""

import hashlib
import os
import time
import uuid
import zlib
from dataclasses import dataclass
from functools import lru_cache

SHARDS = 64  # at most 64: new_ledger_id keeps the shard in six bits
PREFIX = "tally"


def shard_of(app_id: str, user_id: str) -> int:
    return zlib.crc32(f"{app_id}:{user_id}".encode()) % SHARDS


def _tag(shard: int) -> str:
    return f"{PREFIX}:{{s{shard}}}"


def outbox_key(shard: int) -> str:
    return f"{_tag(shard)}:outbox"


def unpersisted_key(shard: int) -> str:
    """Hash of the shard's entries not yet in PostgreSQL: ledger_id -> entry JSON."""
    return f"{_tag(shard)}:unpersisted"


def outbox_keys() -> list[str]:
    """Every shard's outbox, in shard order."""
    return [outbox_key(shard) for shard in range(SHARDS)]


def flush_key(shard: int) -> str:
    """Set while a flush of the shard's outbox is queued or running, so only one is."""
    return f"{_tag(shard)}:flush"


def complete_key(shard: int) -> str:
    """Set while every account of the shard that has ledger entries is in Redis or has a
    tombstone (tombstone_key), so that a missing account without one is a new one
    (engine.ledger.completeness). Lost with the data."""
    return f"{_tag(shard)}:complete"


# Tombstone sets per shard: each stays an intset (8 bytes a member) up to Redis's
# set-max-intset-entries, 512 by default: 8 million evicted accounts in all.
TOMBSTONE_BUCKETS = 256


def tombstone_key(shard: int, bucket: int) -> str:
    """Set of some of the shard's evicted accounts (lua/evict_account.lua), each as
    AccountKeys.tombstone_member(). A key per account would cost a hundred bytes and more
    each, a set of names per shard about seventy: this, about ten
    (docs/operations.md#redis-memory)."""
    return f"{_tag(shard)}:gone:{bucket}"


def eviction_lock_key() -> str:
    """Held by the one worker looking for idle accounts (engine.ledger.eviction)."""
    return f"{PREFIX}:eviction-lock"


def completing_key(shard: int) -> str:
    """The token of the pass over the ledger that will mark the shard complete."""
    return f"{_tag(shard)}:completing"


def completeness_lock_key() -> str:
    """Held by the one worker running a pass over the ledger."""
    return f"{PREFIX}:completing-lock"


def expiry_due_key(shard: int) -> str:
    """Sorted set of the shard's accounts with a grant or hold to expire, scored by when the
    next one does (epoch ms): the worker's sweep expires them for accounts nobody touches."""
    return f"{_tag(shard)}:expiry-due"


def top_up_due_key(shard: int) -> str:
    """Sorted set of the shard's accounts with an auto top-up to run, scored by when (epoch ms)."""
    return f"{_tag(shard)}:topup-due"


def plan_usage_key(shard: int, app_id: str, month: str) -> str:
    """Hash of an app's operations in one shard and calendar month (YYYY-MM, UTC): `n` counted
    by the scripts; `base`, what `n` was at the worker's last sum, and `others`, every other
    shard's operations then (engine/plans)."""
    return f"{_tag(shard)}:plan:{app_id}:{month}"


def plan_total_key(app_id: str, month: str) -> str:
    """The app's operations in the month as of the worker's last sum."""
    return f"{PREFIX}:plan-total:{app_id}:{month}"


def plans_lock_key() -> str:
    """Held by the one worker summing plan usage this second."""
    return f"{PREFIX}:plans-lock"


# Every account hash, for SCAN; parse_account_key reads a match back.
ACCOUNT_PATTERN = f"{PREFIX}:{{s*}}:acct:*"


def parse_account_key(key: str) -> tuple[str, str]:
    """(app_id, user_id) of an account key; app ids never contain ':'."""
    app_id, _, user_id = key.split(":acct:", 1)[1].partition(":")
    return app_id, user_id


def reconcile_schedule_key() -> str:
    """Set, with the reconcile interval as its TTL, while a reconciliation is not yet due."""
    return f"{PREFIX}:reconcile:scheduled"


def parse_member(member: str) -> tuple[str, str]:
    """(app_id, user_id) of an account's member in a shard's top-up-due or expiry-due set
    (AccountKeys.top_up_member()); app ids never contain ':'."""
    app_id, _, user_id = member.partition(":")
    return app_id, user_id


def purchase_lock_key(app_id: str, user_id: str, idempotency_key: str) -> str:
    digest = hashlib.sha256(f"{app_id}\0{user_id}\0{idempotency_key}".encode()).hexdigest()
    return f"{PREFIX}:purchase-lock:{digest}"


# A UUIDv7 layout: unix milliseconds in bits 80-127, version 7 in bits 76-79, the RFC 4122
# variant in bits 62-63, random bits elsewhere, and the shard in bits 0-5.
_RANDOM_KEEP = ((1 << 80) - 1) & ~((0xF << 76) | (0x3 << 62) | 0x3F)
_V7_SET = (0x7 << 76) | (0x2 << 62)


def new_ledger_id(shard: int, now_ms: int | None = None) -> str:
    """A time-ordered UUID (version 7) stamped with `now_ms`, whose last six bits name the
    shard of its account.

    A refund names only the ledger id; the shard tells where to look for an entry that has not
    reached PostgreSQL yet, without an index outside the shard's slot. The time is the entry's
    `created_at` (callers pass the same `now_ms`), so a lookup by id in the month-partitioned
    ledger reads one partition (ledger_id_ms).
    """
    if now_ms is None:
        now_ms = time.time_ns() // 1_000_000
    # Integer arithmetic on the random bits: several times cheaper than uuid.UUID, and this
    # runs on every write.
    n = (now_ms << 80) | (int.from_bytes(os.urandom(10)) & _RANDOM_KEEP) | _V7_SET | shard
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def shard_of_ledger_id(ledger_id: uuid.UUID) -> int:
    return ledger_id.bytes[15] & 0x3F


def ledger_id_ms(ledger_id: uuid.UUID) -> int | None:
    """The unix milliseconds a ledger id was stamped with, or None for an id that carries no
    time: version 7 (new_ledger_id), version 8 (the scripts' derived ids, which keep the
    stamp of the id they derive from, or random bits if that was a legacy version 4)."""
    if ledger_id.version not in (7, 8):
        return None
    return ledger_id.int >> 80


@dataclass(frozen=True, slots=True)
class AccountKeys:
    shard: int
    account: str
    recent: str
    outbox: str
    unpersisted: str
    grants: str
    holds: str
    expiry_due: str
    _tag: str
    _scope: str

    def idempotency(self, key: str) -> str:
        # Hashing keeps the name bounded and unambiguous whatever the user id and key contain.
        return f"{self._tag}:idem:{self._scope}:{hashlib.sha256(key.encode()).hexdigest()}"

    # Auto top-up keys, built only when a call needs them (most deducts do not).

    def top_up(self) -> str:
        """Hash: threshold (credits) while auto top-up is on; pending (what started one)."""
        return f"{self._tag}:topup:{self._scope}"

    def top_up_due(self) -> str:
        return top_up_due_key(self.shard)

    def top_up_member(self) -> str:
        """The account's name in its shard's top-up-due set: app_id:user_id."""
        return self._scope

    def script_keys(self) -> list[str]:
        """The keys every script that changes the account takes first (lua/account.lua)."""
        return [
            self.account, self.recent, self.outbox, self.unpersisted, self.grants, self.holds,
            self.expiry_due,
        ]  # fmt: skip

    def hold_end(self, token: str) -> str:
        """How a settled hold ended ("captured <ledger_id>"), kept a while after it did."""
        return f"{self._tag}:hold-end:{self._scope}:{token}"

    def plan_usage(self, app_id: str, month: str) -> str:
        return plan_usage_key(self.shard, app_id, month)

    def complete(self) -> str:
        return complete_key(self.shard)

    def completing(self) -> str:
        return completing_key(self.shard)

    def refund_marker(self, refunded_ledger_id: str) -> str:
        """Holds the ledger id of the refund of `refunded_ledger_id`, until a day after the
        refund is persisted (engine.ledger.outbox): PostgreSQL refuses a second one then."""
        return f"{self._tag}:refunded:{refunded_ledger_id}"

    def tombstone(self) -> str:
        """The tombstone set of the account (tombstone_key); built only off the hot path."""
        # Above the six bits that chose the shard, so that buckets fill evenly.
        bucket = (zlib.crc32(self._scope.encode()) >> 6) % TOMBSTONE_BUCKETS
        return tombstone_key(self.shard, bucket)

    def tombstone_member(self) -> str:
        """The account in its tombstone set: 63 bits of its name's SHA-256, an integer, which
        Redis stores in 8 bytes. Two accounts sharing one can only make Redis decline to
        vouch for a new user (lua/vouch_account.lua), never the reverse: tombstones are never
        taken out."""
        digest = hashlib.sha256(self._scope.encode()).digest()
        return str(int.from_bytes(digest[:8]) >> 1)


# The hot set of accounts keeps its names built: seven f-strings and a CRC per write otherwise.
@lru_cache(maxsize=8192)
def account_keys(app_id: str, user_id: str) -> AccountKeys:
    shard = shard_of(app_id, user_id)
    tag = _tag(shard)
    return AccountKeys(
        shard=shard,
        account=f"{tag}:acct:{app_id}:{user_id}",
        recent=f"{tag}:recent:{app_id}:{user_id}",
        outbox=outbox_key(shard),
        unpersisted=unpersisted_key(shard),
        grants=f"{tag}:grants:{app_id}:{user_id}",
        holds=f"{tag}:holds:{app_id}:{user_id}",
        expiry_due=expiry_due_key(shard),
        _tag=tag,
        _scope=f"{app_id}:{user_id}",
    )
