"""The one place Redis key names are built.

Every key of one account lives under the hash tag of the account's shard, and each shard's outbox
stream carries the same tag, so a script touching an account, its idempotency record, its recent
list and the outbox stays inside one Redis Cluster slot. The tag is the first `{...}` of the key,
which is why it comes before any caller-supplied text.
"""

import hashlib
import zlib
from dataclasses import dataclass

SHARDS = 64
PREFIX = "tally"


def shard_of(app_id: str, user_id: str) -> int:
    return zlib.crc32(f"{app_id}:{user_id}".encode()) % SHARDS


def _tag(shard: int) -> str:
    return f"{PREFIX}:{{s{shard}}}"


def outbox_key(shard: int) -> str:
    return f"{_tag(shard)}:outbox"


@dataclass(frozen=True, slots=True)
class AccountKeys:
    shard: int
    account: str
    recent: str
    outbox: str
    _idempotency_prefix: str

    def idempotency(self, key: str) -> str:
        # Hashing keeps the name bounded and unambiguous whatever the user id and key contain.
        return self._idempotency_prefix + hashlib.sha256(key.encode()).hexdigest()


def account_keys(app_id: str, user_id: str) -> AccountKeys:
    shard = shard_of(app_id, user_id)
    tag = _tag(shard)
    return AccountKeys(
        shard=shard,
        account=f"{tag}:acct:{app_id}:{user_id}",
        recent=f"{tag}:recent:{app_id}:{user_id}",
        outbox=f"{tag}:outbox",
        _idempotency_prefix=f"{tag}:idem:{app_id}:{user_id}:",
    )
