"""Credits operations on the hot path: one Lua script call per add or deduct."""

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

import orjson
from redis.asyncio import Redis

from engine.bridge import Bridge
from engine.errors import (
    AlreadyRefundedError,
    IdempotencyConflictError,
    InsufficientCreditsError,
    InvalidRequestError,
    NotFoundError,
    TallyError,
    UnavailableError,
)
from engine.ledger.defaults import HYDRATE_ATTEMPTS
from engine.ledger.repository import LedgerRepository
from engine.ledger.summaries import Refusals
from engine.models import (
    MAX_AMOUNT,
    MAX_DESCRIPTION,
    MAX_IDEMPOTENCY_KEY,
    MAX_REFERENCE_ID,
    MAX_USER_ID,
    AppContext,
    Balance,
    EntryResult,
    HistoryPage,
    LedgerEntry,
    Operation,
    RefundResult,
    text_problem,
)
from engine.settings import Settings
from engine.store import scripts
from engine.store.keys import (
    AccountKeys,
    account_keys,
    new_ledger_id,
    shard_of_ledger_id,
    unpersisted_key,
)
from engine.store.redis import outages
from engine.store.scripts import Scripts

BatchOutcome = EntryResult | TallyError


class EntryFields(TypedDict, total=False):
    """What an add or deduct may carry besides its user and amount."""

    description: str | None
    reference_id: str | None
    metadata: dict[str, Any] | None
    idempotency_key: str | None


class Credits:
    def __init__(
        self, redis: "Redis", repository: LedgerRepository, bridge: Bridge, settings: Settings
    ) -> None:
        self._redis = redis
        self._scripts = Scripts.register_async(redis)
        self._repository = repository
        self._bridge = bridge
        self._idempotency_ttl = settings.idempotency_ttl_seconds
        self._recent_entries = settings.recent_entries
        # Refused deducts write no entry: counted here for the dashboard (engine.ledger.summaries).
        self.refusals = Refusals()

    async def add(
        self, app: AppContext, user_id: str, amount: int, **fields: Unpack[EntryFields]
    ) -> EntryResult:
        return await self._apply(app, self._prepare(app, "add", user_id, amount, **fields))

    async def deduct(
        self, app: AppContext, user_id: str, amount: int, **fields: Unpack[EntryFields]
    ) -> EntryResult:
        try:
            return await self._apply(app, self._prepare(app, "deduct", user_id, -amount, **fields))
        except InsufficientCreditsError:
            self.refusals.count(app.app_id)
            raise

    async def take_back(
        self,
        app: AppContext,
        user_id: str,
        amount: int,
        *,
        description: str | None = None,
        reference_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> EntryResult | None:
        """Take up to `amount` credits back (a refunded payment), never below the balance floor.

        Returns the entry, whose amount says what was taken, or None when the balance was
        already at its floor and nothing could be.
        """
        try:
            call = self._prepare(
                app, "payment_refund", user_id, -amount, description=description,
                reference_id=reference_id, idempotency_key=idempotency_key, clamp=True,
            )  # fmt: skip
            return await self._apply(app, call)
        except InsufficientCreditsError:
            return None

    async def refund(
        self,
        app: AppContext,
        ledger_id: str,
        *,
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> RefundResult:
        """Reverse an entry of the app with a new entry; each entry can be refunded once."""
        try:
            refunded_id = uuid.UUID(ledger_id)
        except (ValueError, AttributeError, TypeError):
            raise InvalidRequestError("ledger_id must be a UUID") from None
        original = await self._find_entry(app, refunded_id)
        if original is None:
            raise NotFoundError(f"no ledger entry {ledger_id}")
        if original.kind == "refund":
            raise InvalidRequestError("a refund cannot itself be refunded")
        keys = account_keys(app.app_id, original.user_id)
        # A refund already in PostgreSQL outlives any Redis state (a flush, a restore): put its
        # marker back so the script refuses a second one.
        refund_id = await self._bridge.call(self._repository.refund_of, refunded_id)
        if refund_id is not None:
            with outages():
                await self._redis.set(keys.refund_marker(original.ledger_id), refund_id, nx=True)
        call = self._prepare(
            app, "refund", original.user_id, -original.amount, description=description,
            idempotency_key=idempotency_key, refund_of=original.ledger_id,
        )  # fmt: skip
        result = await self._apply(app, call)
        return RefundResult(refund=result, refunded_ledger_id=original.ledger_id)

    async def refunded(self, app: AppContext, user_id: str, ledger_ids: list[str]) -> set[str]:
        """Which of the account's entries have been refunded: Redis marks a refund the moment
        it is applied, PostgreSQL keeps it when Redis has lost the mark."""
        if not ledger_ids:
            return set()
        keys = account_keys(app.app_id, user_id)
        with outages():
            marks = await self._redis.mget([keys.refund_marker(i) for i in ledger_ids])
        found = {ledger_id for ledger_id, mark in zip(ledger_ids, marks, strict=True) if mark}
        rest = [ledger_id for ledger_id in ledger_ids if ledger_id not in found]
        return found | await self._bridge.call(self._repository.refunded, rest)

    async def balance(self, app: AppContext, user_id: str) -> Balance:
        _check_text("user_id", user_id, MAX_USER_ID, required=True)
        keys = account_keys(app.app_id, user_id)
        for _ in range(HYDRATE_ATTEMPTS):
            with outages():
                balance, updated_at = await self._redis.hmget(keys.account, "balance", "updated_at")
            if balance is not None:
                return Balance(user_id, int(balance), int(updated_at) if updated_at else None)
            if not await self._hydrate(app.app_id, user_id, keys, create=False):
                return Balance(user_id, 0, None)
        raise UnavailableError("account keeps disappearing from Redis; retry shortly")

    async def history(self, app: AppContext, user_id: str, limit: int, offset: int) -> HistoryPage:
        """Newest first, every acknowledged entry once, however far behind the worker is.

        An account's entries are numbered 1..seq without gaps, so a page is a range of seqs:
        the recent list in Redis holds the newest, PostgreSQL what the worker persisted, and
        the shard's unpersisted hash whatever is neither (a large backlog).
        """
        _check_text("user_id", user_id, MAX_USER_ID, required=True)
        keys = account_keys(app.app_id, user_id)
        for _ in range(HYDRATE_ATTEMPTS):
            with outages():
                # One transaction: the list's head and seq move together with every write.
                pipe = self._redis.pipeline(transaction=True)
                pipe.hget(keys.account, "seq")
                pipe.lrange(keys.recent, offset, offset + limit - 1)
                seq, recent = await pipe.execute()
            if seq is not None:
                break
            if not await self._hydrate(app.app_id, user_id, keys, create=False):
                return HistoryPage(user_id, [], limit, offset, has_more=False)
        else:
            raise UnavailableError("account keeps disappearing from Redis; retry shortly")
        top = int(seq) - offset
        bottom = max(1, top - limit + 1)
        page = {entry.seq: entry for entry in map(LedgerEntry.from_json, recent)}
        wanted = {s for s in range(bottom, top + 1) if s not in page}
        outage = None
        if wanted:
            try:
                page |= await self._persisted(app.app_id, user_id, wanted)
            except UnavailableError as exc:
                outage = exc  # what is still in Redis may be all that is needed
            wanted.difference_update(page)
        if wanted:
            found = await self._unpersisted(app.app_id, user_id, keys.unpersisted, wanted)
            page |= {entry.seq: entry for entry in found}
            wanted.difference_update(page)
        if wanted and outage is not None:
            raise outage
        if wanted:
            # Persisted between the two reads: committed, then removed from Redis. Once more.
            page |= await self._persisted(app.app_id, user_id, wanted)
        return HistoryPage(
            user_id=user_id,
            entries=[page[s] for s in range(top, bottom - 1, -1) if s in page],
            limit=limit,
            offset=offset,
            has_more=bottom > 1,
        )

    async def _persisted(self, app_id: str, user_id: str, seqs: set[int]) -> dict[int, LedgerEntry]:
        entries = await self._bridge.call(
            self._repository.entries_between, app_id, user_id, min(seqs), max(seqs)
        )
        return {entry.seq: entry for entry in entries if entry.seq in seqs}

    async def _unpersisted(
        self, app_id: str, user_id: str, unpersisted: str, seqs: set[int]
    ) -> list[LedgerEntry]:
        """Entries of the account with these seqs, from its shard's unpersisted hash: what a
        backlog holds beyond the recent list. A scan of the shard's backlog, so rare."""
        found = []
        marker = f'"app_id":{orjson.dumps(app_id).decode()}'
        with outages():
            async for _, raw in self._redis.hscan_iter(unpersisted, count=1_000):
                if marker not in raw:
                    continue
                entry = LedgerEntry.from_json(raw)
                if entry.user_id == user_id and entry.seq in seqs:
                    found.append(entry)
        return found

    async def _find_entry(self, app: AppContext, ledger_id: uuid.UUID) -> LedgerEntry | None:
        # Redis first: an entry leaves the unpersisted hash only after its COMMIT, so a miss
        # there followed by a miss in PostgreSQL means the entry does not exist.
        with outages():
            pending = await self._redis.hget(
                unpersisted_key(shard_of_ledger_id(ledger_id)), str(ledger_id)
            )
        if pending is not None:
            entry: LedgerEntry | None = LedgerEntry.from_json(pending)
        else:
            entry = await self._bridge.call(self._repository.find_entry, ledger_id)
        return entry if entry is not None and entry.app_id == app.app_id else None

    async def batch(self, app: AppContext, operations: list[Operation]) -> list[BatchOutcome]:
        """Apply many adds and deducts in as few round trips as possible: one pipeline of
        script calls, plus one more for the accounts that had to be rebuilt from the ledger.

        Each operation is all-or-nothing on its own, in order; the batch as a whole is not:
        one refused deduct does not stop the others. Returns per operation its EntryResult or
        the TallyError that refused it.
        """
        outcomes: list[BatchOutcome | None] = [None] * len(operations)
        calls: dict[int, _Call] = {}
        for index, op in enumerate(operations):
            try:
                delta = op.amount if op.kind == "add" else -op.amount
                calls[index] = self._prepare(
                    app, op.kind, op.user_id, delta, description=op.description,
                    reference_id=op.reference_id, metadata=op.metadata,
                    idempotency_key=op.idempotency_key,
                )  # fmt: skip
            except TallyError as exc:
                outcomes[index] = exc
        pending = list(calls)
        for _ in range(HYDRATE_ATTEMPTS):
            if not pending:
                break
            replies = await scripts.run_many(
                self._redis,
                self._scripts.apply_entry,
                [(calls[i].script_keys, calls[i].args) for i in pending],
                each=True,
            )
            missing = []
            for index, reply in zip(pending, replies, strict=True):
                if isinstance(reply, UnavailableError):
                    outcomes[index] = reply  # refused before it ran (out of memory)
                elif reply[0] == "missing":
                    missing.append(index)
                else:
                    try:
                        outcomes[index] = calls[index].result(reply)
                    except InsufficientCreditsError as exc:
                        self.refusals.count(app.app_id)
                        outcomes[index] = exc
                    except TallyError as exc:
                        outcomes[index] = exc
            if missing:
                accounts = {calls[i].user_id: calls[i].keys for i in missing}
                try:
                    await self._hydrate_many(app.app_id, accounts, create=True)
                except UnavailableError as exc:
                    # Only these wait for PostgreSQL; the others are applied and say so.
                    for index in missing:
                        outcomes[index] = exc
                    missing = []
            pending = missing
        gone = UnavailableError("account keeps disappearing from Redis; retry shortly")
        return [gone if outcome is None else outcome for outcome in outcomes]

    async def _apply(self, app: AppContext, call: "_Call") -> EntryResult:
        """Run one prepared entry, rebuilding its account from the ledger when Redis lacks it."""
        for _ in range(HYDRATE_ATTEMPTS):
            reply = await scripts.run(
                self._redis, self._scripts.apply_entry, call.script_keys, call.args
            )
            if reply[0] != "missing":
                return call.result(reply)
            await self._hydrate(app.app_id, call.user_id, call.keys, create=True)
        raise UnavailableError("account keeps disappearing from Redis; retry shortly")

    def _prepare(
        self,
        app: AppContext,
        kind: str,
        user_id: str,
        delta: int,
        *,
        description: str | None = None,
        reference_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        refund_of: str | None = None,
        clamp: bool = False,
    ) -> "_Call":
        """Validate an entry and build its apply_entry.lua call."""
        _check_text("user_id", user_id, MAX_USER_ID, required=True)
        _check_amount(abs(delta))
        _check_text("description", description, MAX_DESCRIPTION)
        _check_text("reference_id", reference_id, MAX_REFERENCE_ID)
        _check_text("Idempotency-Key", idempotency_key, MAX_IDEMPOTENCY_KEY)
        metadata_json = _metadata_json(metadata)
        keys = account_keys(app.app_id, user_id)
        now_ms = time.time_ns() // 1_000_000
        ledger_id = new_ledger_id(keys.shard)
        entry = orjson.dumps(
            {
                "ledger_id": ledger_id,
                "app_id": app.app_id,
                "user_id": user_id,
                "kind": kind,
                "description": description,
                "reference_id": reference_id,
                "metadata": orjson.Fragment(metadata_json),
                "idempotency_key": idempotency_key,
                "refund_of": refund_of,
                "created_at": now_ms,
            }
        )
        script_keys = [keys.account, keys.recent, keys.outbox, keys.unpersisted]
        mode = "c" if clamp else ""
        fingerprint = ""
        if idempotency_key is not None:
            script_keys.append(keys.idempotency(idempotency_key))
            mode += "i"
            fingerprint = hashlib.sha256(
                orjson.dumps([kind, user_id, delta, description, reference_id, refund_of])
                + metadata_json.encode()
            ).hexdigest()
        if refund_of is not None:
            script_keys.append(keys.refund_marker(refund_of))
            mode += "r"
        args: tuple[Any, ...] = (
            delta,
            -app.overdraft_limit,
            entry[:-1],
            fingerprint,
            self._idempotency_ttl,
            self._recent_entries,
            now_ms,
            ledger_id,
        )
        if kind == "deduct" and app.auto_top_up:
            # Usage may start the account's auto top-up; refunds and take-backs never do.
            script_keys += (keys.top_up(), keys.top_up_due())
            args += (mode + "t", keys.top_up_member())
        else:
            args += (mode,)
        return _Call(user_id, keys, script_keys, args, -app.overdraft_limit, refund_of)

    async def _hydrate(self, app_id: str, user_id: str, keys: AccountKeys, *, create: bool) -> bool:
        """Rebuild a missing account from the ledger; never read a missing account as 0.

        With create=False an account the ledger has never seen is left absent (a balance read of
        an unknown user must not allocate memory); returns whether the account now exists.
        """
        return user_id in await self._hydrate_many(app_id, {user_id: keys}, create=create)

    async def _hydrate_many(
        self, app_id: str, accounts: dict[str, AccountKeys], *, create: bool
    ) -> set[str]:
        """_hydrate for many accounts: one PostgreSQL query, one Redis round trip.

        With PostgreSQL unreachable, Redis answers for the shards it holds completely
        (engine.ledger.completeness), so a brand-new user's first add still works. PostgreSQL
        stays the first judge: a mark can outlive a loss Redis cannot see (the last second of
        an AOF `everysec` crash), and PostgreSQL then still has the lost account.
        """
        try:
            snapshots = await self._bridge.call(
                self._repository.account_snapshots, app_id, list(accounts)
            )
        except UnavailableError:
            return await self._vouch(accounts, create=create)
        calls = []
        for user_id, (balance, seq, updated_at) in snapshots.items():
            if updated_at is None and not create:
                continue
            updated_ms = "" if updated_at is None else str(int(updated_at.timestamp() * 1000))
            calls.append(([accounts[user_id].account], (balance, seq, updated_ms, "")))
        if calls:
            await scripts.run_many(self._redis, self._scripts.hydrate, calls)
        return {user_id for user_id in snapshots if create or snapshots[user_id][2] is not None}

    async def _vouch(self, accounts: dict[str, AccountKeys], *, create: bool) -> set[str]:
        """The accounts that exist (created at 0 where Redis vouches they are new); raises
        UnavailableError when Redis cannot vouch for one of them."""
        flag = "1" if create else "0"
        calls = [([keys.account, keys.complete()], (flag,)) for keys in accounts.values()]
        replies = await scripts.run_many(self._redis, self._scripts.vouch_account, calls)
        if -1 in replies:
            raise UnavailableError("PostgreSQL is unavailable; retry shortly", "postgresql")
        return {user_id for user_id, reply in zip(accounts, replies, strict=True) if reply == 1}


@dataclass(frozen=True, slots=True)
class _Call:
    """One prepared apply_entry.lua call, and how to read its reply."""

    user_id: str
    keys: AccountKeys
    script_keys: list[str]
    args: tuple[Any, ...]
    floor: int
    refund_of: str | None

    def result(self, reply: list[Any]) -> EntryResult:
        status = reply[0]
        if status == "ok" or status == "replay":
            stored = orjson.loads(reply[2])
            return EntryResult(
                ledger_id=stored["ledger_id"],
                user_id=stored["user_id"],
                kind=stored["kind"],
                amount=stored["amount"],
                balance_before=int(reply[1]),
                balance_after=stored["balance_after"],
                created_at_ms=stored["created_at"],
                replayed=status == "replay",
                top_up_started=len(reply) > 3 and reply[3] == 1,
            )
        if status == "insufficient":
            raise InsufficientCreditsError(balance=int(reply[1]), floor=self.floor)
        if status == "conflict":
            raise IdempotencyConflictError()
        if status == "refunded":
            raise AlreadyRefundedError(str(self.refund_of), reply[1])
        if status == "overflow":
            raise InvalidRequestError(
                f"amount would take the balance above {MAX_AMOUNT}; balance is {reply[1]}"
            )
        raise RuntimeError(f"apply_entry.lua returned {reply!r}")


def _check_amount(amount: int) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int) or not 1 <= amount <= MAX_AMOUNT:
        raise InvalidRequestError(f"amount must be an integer from 1 to {MAX_AMOUNT}")


def _check_text(name: str, value: str | None, max_length: int, *, required: bool = False) -> None:
    if value is None and not required:
        return
    if required and isinstance(value, str):
        problem = text_problem(name, value, max_length)
        if problem:
            raise InvalidRequestError(problem)
    if not isinstance(value, str) or not (1 if required else 0) <= len(value) <= max_length:
        qualifier = "a non-empty string" if required else "a string"
        raise InvalidRequestError(f"{name} must be {qualifier} of at most {max_length} characters")
    if "\x00" in value:
        # PostgreSQL text cannot hold NUL; an entry it refuses would block its outbox shard.
        raise InvalidRequestError(f"{name} must not contain NUL characters")


def _metadata_json(metadata: dict[str, Any] | None) -> str:
    if metadata is None:
        return "null"
    if not isinstance(metadata, dict):
        raise InvalidRequestError("metadata must be a JSON object")
    try:
        encoded = json.dumps(
            metadata, allow_nan=False, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidRequestError(f"metadata must be plain JSON: {exc}") from exc
    if "\\u0000" in encoded:
        raise InvalidRequestError("metadata must not contain NUL characters")
    return encoded
