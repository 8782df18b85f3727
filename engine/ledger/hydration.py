"""Rebuilding accounts Redis lacks from the PostgreSQL ledger: balance, seq, grants and holds.

A missing account is never read as 0 (invariant 5): every script that needs an account answers
"missing", and the caller hydrates it and calls again. Accounts go missing when Redis loses
data, and when they idle (engine.ledger.eviction).
"""

import time
from collections import defaultdict
from typing import Any

from redis import Redis as SyncRedis
from redis.asyncio import Redis

from engine.bridge import Bridge
from engine.errors import PlanLimitError, UnavailableError
from engine.ledger.defaults import HYDRATE_ATTEMPTS
from engine.ledger.expiring import Expiring, rebuild
from engine.ledger.repository import LedgerRepository, Snapshot
from engine.models import AppContext
from engine.store import scripts
from engine.store.keys import AccountKeys, account_keys
from engine.store.pipelined import Calls
from engine.store.scripts import Lua, Scripts, run_all

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


def rebuild_accounts(
    redis: SyncRedis,
    scripts_: Scripts,
    repository: LedgerRepository,
    accounts: list[tuple[str, str]],
) -> set[tuple[str, str]]:
    """Hydration for blocking code (the worker's sweeps): put back the accounts the ledger has
    entries of; returns those. Accounts already in Redis are left alone."""
    users: dict[str, list[str]] = defaultdict(list)
    for app_id, user_id in accounts:
        users[app_id].append(user_id)
    found = [
        (app_id, user_id, snapshot)
        for app_id, user_ids in users.items()
        for user_id, snapshot in repository.account_snapshots(app_id, user_ids).items()
        if snapshot.updated_at is not None
    ]
    expiring = expiring_of(repository, found)
    calls = [
        hydrate_call(account_keys(app_id, user_id), snapshot, expiring.get((app_id, user_id)))
        for app_id, user_id, snapshot in found
    ]
    if calls:
        run_all(redis, scripts_.hydrate, calls)
    return {(app_id, user_id) for app_id, user_id, _ in found}


class Hydration:
    def __init__(
        self,
        redis: Redis,
        calls: Calls,
        repository: LedgerRepository,
        bridge: Bridge,
        scripts_: Scripts,
        acks: scripts.Acks = scripts.NO_ACKS,
    ) -> None:
        self._redis = redis
        self._calls = calls
        self._repository = repository
        self._bridge = bridge
        self._scripts = scripts_
        # The replicas every call acknowledged to a caller waits for (a rebuild needs none:
        # the call after it waits for everything written before).
        self.acks = acks

    async def run(
        self, app: AppContext, user_id: str, keys: AccountKeys, script: Lua,
        call: scripts.Call, *, missing: bool = False,
    ) -> Any:  # fmt: skip
        """One script call on an account, rebuilding the account when Redis lacks it (or when
        a call made already answered `missing`)."""
        for _ in range(HYDRATE_ATTEMPTS):
            if missing:
                accounts = {user_id: keys}
                await self.ensure(app.app_id, accounts, create=True, max_users=app.plan_max_users)
            reply = await scripts.run(self._calls, script, call[0], call[1], self.acks)
            missing = reply[0] == "missing"
            if not missing:
                return reply
        raise UnavailableError(GONE)

    async def ensure(
        self,
        app_id: str,
        accounts: dict[str, AccountKeys],
        *,
        create: bool,
        max_users: int | None = None,
    ) -> set[str]:
        """Rebuild missing accounts from the ledger: one PostgreSQL query (two when some have
        grants or holds), one Redis round trip. Returns the users whose account now exists.

        With create=False an account the ledger has never seen is left absent (a balance read
        of an unknown user must not allocate memory). With `max_users`, new users beyond it are
        not made: PlanLimitError names them, after the others are rebuilt.

        With PostgreSQL unreachable, Redis answers for the shards it holds completely
        (engine.ledger.completeness), so a brand-new user's first add still works. PostgreSQL
        stays the first judge: a mark can outlive a loss Redis cannot see (the last second of
        an AOF `everysec` crash), and PostgreSQL then still has the lost account.
        """
        limit = max_users if create else None
        try:
            snapshots, expiring, refused, users = await self._bridge.call(
                self._snapshots, app_id, list(accounts), limit
            )
        except UnavailableError:
            # Without PostgreSQL the users cannot be counted: serving wins over the plan.
            return await self._vouch(accounts, create=create)
        made = {
            user
            for user, snap in snapshots.items()
            if (create and user not in refused) or snap.updated_at is not None
        }
        calls = [
            hydrate_call(accounts[user], snapshots[user], expiring.get((app_id, user)))
            for user in made
        ]
        if calls:
            await scripts.run_many(self._calls, self._scripts.hydrate, calls)
        if refused:
            raise PlanLimitError("max_users", users, limit or 0, frozenset(refused))
        return made

    def _snapshots(
        self, app_id: str, user_ids: list[str], max_users: int | None
    ) -> tuple[dict[str, Snapshot], dict[tuple[str, str], Expiring], list[str], int]:
        snapshots = self._repository.account_snapshots(app_id, user_ids)
        accounts = [(app_id, user_id, snap) for user_id, snap in snapshots.items()]
        refused: list[str] = []
        users = 0
        # In the caller's order: a batch's first new users are the ones let in.
        new = [user for user in user_ids if snapshots[user].updated_at is None]
        if max_users is not None and new:
            refused, users = self._repository.admit_users(app_id, new, max_users)
        return snapshots, expiring_of(self._repository, accounts), refused, users

    async def _vouch(self, accounts: dict[str, AccountKeys], *, create: bool) -> set[str]:
        """The accounts that exist (created at 0 where Redis vouches they are new); raises
        UnavailableError when Redis cannot vouch for one of them."""
        flag = "1" if create else "0"
        calls = [
            ([keys.account, keys.complete(), keys.tombstone()], (flag, keys.tombstone_member()))
            for keys in accounts.values()
        ]
        replies = await scripts.run_many(self._calls, self._scripts.vouch_account, calls)
        if -1 in replies:
            raise UnavailableError("PostgreSQL is unavailable; retry shortly", "postgresql")
        return {user_id for user_id, reply in zip(accounts, replies, strict=True) if reply == 1}
