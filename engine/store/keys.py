"""The one place Redis key names are built.

Every key of one account lives under the hash tag of the account's shard, and each shard's outbox
stream carries the same tag, so a script touching an account, its idempotency record, its recent
list and the outbox stays inside one Redis Cluster slot. The tag is the first `{...}` of the key,
which is why it comes before any caller-supplied text.
"""

import hashlib
import os
import uuid
import zlib
from dataclasses import dataclass

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
    """Set while every account of the shard that has ledger entries is in Redis, so that a
    missing account is a new one (engine.ledger.completeness). Lost with the data."""
    return f"{_tag(shard)}:complete"


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


# Version 4 in bits 76-79, RFC 4122 variant in bits 62-63, the shard in bits 0-5.
_UUID4_KEEP = ~((0xF << 76) | (0x3 << 62) | 0x3F) & ((1 << 128) - 1)
_UUID4_SET = (0x4 << 76) | (0x2 << 62)


def new_ledger_id(shard: int) -> str:
    """A random UUID (version 4) whose last six bits name the shard of its account.

    A refund names only the ledger id; the shard tells where to look for an entry that has not
    reached PostgreSQL yet, without an index outside the shard's slot.
    """
    # Integer arithmetic on the random bits: several times cheaper than uuid.UUID, and this
    # runs on every write.
    n = int.from_bytes(os.urandom(16))
    n = (n & _UUID4_KEEP) | _UUID4_SET | shard
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def shard_of_ledger_id(ledger_id: uuid.UUID) -> int:
    return ledger_id.bytes[15] & 0x3F


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
        """Holds the ledger id of the refund of `refunded_ledger_id`; it never expires."""
        return f"{self._tag}:refunded:{refunded_ledger_id}"


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
