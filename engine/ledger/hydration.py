"""Rebuilding accounts Redis lacks from the PostgreSQL ledger: balance, seq, grants and holds.

A missing account is never read as 0 (invariant 5): every script that needs an account answers
"missing", and the caller hydrates it and calls again.
"""

import time
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from engine.bridge import Bridge
from engine.errors import UnavailableError
from engine.ledger.defaults import HYDRATE_ATTEMPTS
from engine.ledger.expiring import Expiring, rebuild
from engine.ledger.repository import LedgerRepository, Snapshot
from engine.store import scripts
from engine.store.keys import AccountKeys
from engine.store.scripts import Scripts

GONE = "account keeps disappearing from Redis; retry shortly"


def hydrate_call(
    keys: AccountKeys, snapshot: Snapshot, expiring: Expiring | None, token: str = ""
) -> scripts.Call:
    """hydrate.lua's keys and arguments for one account; `token` is a completeness pass's."""
    updated = snapshot.updated_at
    updated_ms = "" if updated is None else str(int(updated.timestamp() * 1000))
    script_keys = [keys.account, keys.grants, keys.holds, keys.expiry_due]
    if token:
        script_keys.append(keys.completing())
    extras = (expiring or Expiring()).hydrate_args()
    return script_keys, [snapshot.balance, snapshot.seq, updated_ms, token, *extras]


def expiring_of(
    repository: LedgerRepository, accounts: list[tuple[str, str, Snapshot]]
) -> dict[tuple[str, str], Expiring]:
    """The grants and holds of the accounts whose ledger has any."""
    wanted = [(app, user, snap.seq) for app, user, snap in accounts if snap.expiring]
    if not wanted:
        return {}
    now_ms = time.time_ns() // 1_000_000
    found = repository.expiring_entries(wanted)
    return {account: rebuild(entries, now_ms) for account, entries in found.items()}


class Hydration:
    def __init__(
        self, redis: Redis, repository: LedgerRepository, bridge: Bridge, scripts_: Scripts[Any]
    ) -> None:
        self._redis = redis
        self._repository = repository
        self._bridge = bridge
        self._scripts = scripts_

    async def run(
        self, app_id: str, user_id: str, keys: AccountKeys, script: AsyncScript, call: scripts.Call
    ) -> Any:
        """One script call on an account, rebuilding the account when Redis lacks it."""
        for _ in range(HYDRATE_ATTEMPTS):
            reply = await scripts.run(self._redis, script, call[0], call[1])
            if reply[0] != "missing":
                return reply
            await self.ensure(app_id, {user_id: keys}, create=True)
        raise UnavailableError(GONE)

    async def ensure(
        self, app_id: str, accounts: dict[str, AccountKeys], *, create: bool
    ) -> set[str]:
        """Rebuild missing accounts from the ledger: one PostgreSQL query (two when some have
        grants or holds), one Redis round trip. Returns the users whose account now exists.

        With create=False an account the ledger has never seen is left absent (a balance read
        of an unknown user must not allocate memory).

        With PostgreSQL unreachable, Redis answers for the shards it holds completely
        (engine.ledger.completeness), so a brand-new user's first add still works. PostgreSQL
        stays the first judge: a mark can outlive a loss Redis cannot see (the last second of
        an AOF `everysec` crash), and PostgreSQL then still has the lost account.
        """
        try:
            snapshots, expiring = await self._bridge.call(self._snapshots, app_id, list(accounts))
        except UnavailableError:
            return await self._vouch(accounts, create=create)
        calls = [
            hydrate_call(accounts[user_id], snapshot, expiring.get((app_id, user_id)))
            for user_id, snapshot in snapshots.items()
            if create or snapshot.updated_at is not None
        ]
        if calls:
            await scripts.run_many(self._redis, self._scripts.hydrate, calls)
        return {user for user, snap in snapshots.items() if create or snap.updated_at is not None}

    def _snapshots(
        self, app_id: str, user_ids: list[str]
    ) -> tuple[dict[str, Snapshot], dict[tuple[str, str], Expiring]]:
        snapshots = self._repository.account_snapshots(app_id, user_ids)
        accounts = [(app_id, user_id, snap) for user_id, snap in snapshots.items()]
        return snapshots, expiring_of(self._repository, accounts)

    async def _vouch(self, accounts: dict[str, AccountKeys], *, create: bool) -> set[str]:
        """The accounts that exist (created at 0 where Redis vouches they are new); raises
        UnavailableError when Redis cannot vouch for one of them."""
        flag = "1" if create else "0"
        calls = [([keys.account, keys.complete()], (flag,)) for keys in accounts.values()]
        replies = await scripts.run_many(self._redis, self._scripts.vouch_account, calls)
        if -1 in replies:
            raise UnavailableError("PostgreSQL is unavailable; retry shortly", "postgresql")
        return {user_id for user_id, reply in zip(accounts, replies, strict=True) if reply == 1}
