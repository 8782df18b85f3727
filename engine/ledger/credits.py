"""Credits operations on the hot path: one Lua script call per add or deduct."""

import time
import uuid
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

import orjson
from redis.asyncio import Redis

from engine.bridge import Bridge
from engine.errors import (
    AlreadyRefundedError,
    ConflictError,
    IdempotencyConflictError,
    InsufficientCreditsError,
    InvalidRequestError,
    NotFoundError,
    PlanLimitError,
    TallyError,
    UnavailableError,
)
from engine.events.watch import watch_arg
from engine.holds.ids import parse_hold_id
from engine.ledger.checks import check_amount, check_text, metadata_json
from engine.ledger.defaults import HYDRATE_ATTEMPTS, REFUND_MARKER_KEPT_SECONDS
from engine.ledger.expiring import account_json
from engine.ledger.hydration import GONE, Hydration
from engine.ledger.idempotency import Replay, fingerprint
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
    Grant,
    HistoryPage,
    LedgerEntry,
    Operation,
    RefundResult,
)
from engine.plans.operations import counted
from engine.settings import Settings
from engine.store import scripts
from engine.store.keys import (
    AccountKeys,
    account_keys,
    new_ledger_id,
    shard_of_ledger_id,
    unpersisted_key,
)
from engine.store.pipelined import Calls
from engine.store.redis import outages
from engine.store.scripts import SCRIPTS

BatchOutcome = EntryResult | TallyError
# Entries that only move held credits, or expire them, are not refundable.
REFUNDABLE = frozenset(("add", "deduct", "payment_refund"))
# What counts towards a plan's monthly operations (with holds), when an API key makes it.
OPERATIONS = frozenset(("add", "deduct"))
MAX_GRANT_MS = 3_652 * 86_400_000  # 10 years
MAX_GRANTS = 1000  # as lua/account.lua


class EntryFields(TypedDict, total=False):
    """What an add or deduct may carry besides its user and amount."""

    description: str | None
    reference_id: str | None
    metadata: dict[str, Any] | None
    idempotency_key: str | None


class Credits:
    def __init__(
        self,
        redis: "Redis",
        calls: Calls,
        repository: LedgerRepository,
        bridge: Bridge,
        settings: Settings,
    ) -> None:
        self._redis = redis
        self._calls = calls  # every script call that posts entries (engine.store.pipelined)
        self._scripts = SCRIPTS
        self._repository = repository
        self._bridge = bridge
        acks = scripts.Acks(settings.redis_wait_replicas, settings.redis_wait_timeout_ms)
        self.hydration = Hydration(redis, calls, repository, bridge, self._scripts, acks)
        self._idempotency_ttl = settings.idempotency_ttl_seconds
        # Refused deducts write no entry: counted here for the dashboard (engine.ledger.summaries).
        self.refusals = Refusals()

    async def add(
        self,
        app: AppContext,
        user_id: str,
        amount: int,
        *,
        expires_at_ms: int | None = None,
        **fields: Unpack[EntryFields],
    ) -> EntryResult:
        """Add credits; with `expires_at_ms` they are a grant, burned before credits that do not
        expire and taken back at that moment by an `expire` entry."""
        call = self._prepare(app, "add", user_id, amount, expires_at_ms=expires_at_ms, **fields)
        return await self._apply(app, call)

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
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> EntryResult | None:
        """Take up to `amount` credits back (a refunded payment), never below the balance floor.

        Returns the entry, whose amount says what was taken, or None when the balance was
        already at its floor and nothing could be.
        """
        try:
            call = self._prepare(
                app, "payment_refund", user_id, -amount, description=description,
                reference_id=reference_id, metadata=metadata, idempotency_key=idempotency_key,
                mode="cp",
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
        if original.kind not in REFUNDABLE:
            raise InvalidRequestError(f"an entry of kind {original.kind} cannot be refunded")
        keys = account_keys(app.app_id, original.user_id)
        # A refund already in PostgreSQL outlives any Redis state (a flush, a restore): put its
        # marker back so the script refuses a second one.
        refund_id = await self._bridge.call(self._repository.refund_of, refunded_id)
        if refund_id is not None:
            with outages():
                await self._redis.set(
                    keys.refund_marker(original.ledger_id), refund_id, nx=True,
                    ex=REFUND_MARKER_KEPT_SECONDS,
                )  # fmt: skip
        mode, grant, parts = refund_moves(original)
        call = self._prepare(
            app, "refund", original.user_id, -original.amount, description=description,
            idempotency_key=idempotency_key, refund_of=original.ledger_id, mode=mode,
            grant=grant, parts=parts,
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
        check_text("user_id", user_id, MAX_USER_ID, required=True)
        keys = account_keys(app.app_id, user_id)
        for _ in range(HYDRATE_ATTEMPTS):
            with outages():
                balance, updated_at, held, due = await self._redis.hmget(
                    keys.account, "balance", "updated_at", "held", "due"
                )
            if balance is None:
                if not await self.hydration.ensure(app.app_id, {user_id: keys}, create=False):
                    return Balance(user_id, 0, None)
                continue
            if due is None:
                updated_ms = int(updated_at) if updated_at else None
                return Balance(user_id, int(balance), updated_ms, int(held or 0))
            found = await self._balance_with_grants(app, user_id, keys, int(due))
            if found is not None:
                return found
        raise UnavailableError(GONE)

    async def _balance_with_grants(
        self, app: AppContext, user_id: str, keys: AccountKeys, due: int
    ) -> Balance | None:
        """An account with grants or holds: what is due expires first, then one read of the
        account and its grants together. None when the account vanished meanwhile."""
        if due <= time.time_ns() // 1_000_000:
            await self.expire_due(app, user_id)
        with outages():
            pipe = self._redis.pipeline(transaction=True)
            pipe.hmget(keys.account, "balance", "updated_at", "held")
            pipe.hgetall(keys.grants)
            (balance, updated_at, held), grants = await pipe.execute()
        if balance is None:
            return None
        active = []
        for grant_id, value in grants.items():
            expires, seq, left = map(int, value.split())
            active.append((expires, seq, Grant(grant_id, left, expires)))
        return Balance(
            user_id,
            int(balance),
            int(updated_at) if updated_at else None,
            int(held or 0),
            tuple(grant for _, _, grant in sorted(active, key=lambda g: (g[0], g[1]))),
        )

    async def expire_due(self, app: AppContext, user_id: str) -> int:
        """Expire the account's grants and holds whose time has come; returns the entries
        written (engine.holds.expiry does this for accounts nobody touches)."""
        keys = account_keys(app.app_id, user_id)
        now_ms = time.time_ns() // 1_000_000
        who = account_json(app.app_id, user_id)
        ledger_id = new_ledger_id(keys.shard, now_ms)
        args = (now_ms, ledger_id, who, watch_arg(app))
        written: int = await scripts.run(
            self._calls, self._scripts.expire_due, keys.script_keys(), args, self.hydration.acks
        )
        return written

    async def history(self, app: AppContext, user_id: str, limit: int, offset: int) -> HistoryPage:
        """Newest first, every acknowledged entry once, however far behind the worker is.

        An account's entries are numbered 1..seq without gaps, so a page is a range of seqs:
        Redis has those the worker has not persisted (the recent list names them, newest
        first), PostgreSQL the others. Redis is read first: an entry persisted meanwhile left
        Redis only after its COMMIT, so PostgreSQL, read next, has it.
        """
        check_text("user_id", user_id, MAX_USER_ID, required=True)
        keys = account_keys(app.app_id, user_id)
        for _ in range(HYDRATE_ATTEMPTS):
            with outages():
                # One transaction: the list's head and seq move together with every write.
                pipe = self._redis.pipeline(transaction=True)
                pipe.hget(keys.account, "seq")
                pipe.lrange(keys.recent, offset, offset + limit - 1)
                seq, listed = await pipe.execute()
            if seq is not None:
                break
            if not await self.hydration.ensure(app.app_id, {user_id: keys}, create=False):
                return HistoryPage(user_id, [], limit, offset, has_more=False)
        else:
            raise UnavailableError(GONE)
        top = int(seq) - offset
        bottom = max(1, top - limit + 1)
        page = await self._listed(keys.unpersisted, listed)
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

    async def _listed(self, unpersisted: str, listed: list[str]) -> dict[int, LedgerEntry]:
        """The entries a recent list names that are still unpersisted (by seq): the list holds
        ids, or whole entries in a list the previous version wrote."""
        raw: list[str | bytes] = [item for item in listed if item.startswith("{")]
        ids = [item for item in listed if not item.startswith("{")]
        if ids:
            with outages():
                raw += [entry for entry in await self._redis.hmget(unpersisted, ids) if entry]
        return {entry.seq: entry for entry in map(LedgerEntry.from_json, raw)}

    async def _persisted(self, app_id: str, user_id: str, seqs: set[int]) -> dict[int, LedgerEntry]:
        entries = await self._bridge.call(
            self._repository.entries_between, app_id, user_id, min(seqs), max(seqs)
        )
        return {entry.seq: entry for entry in entries if entry.seq in seqs}

    async def _unpersisted(
        self, app_id: str, user_id: str, unpersisted: str, seqs: set[int]
    ) -> list[LedgerEntry]:
        """Entries of the account with these seqs, from its shard's unpersisted hash: what a
        recent list of the previous version, which kept 200 entries, left out of a backlog."""
        found = await self._scan_unpersisted(
            unpersisted, f'"app_id":{orjson.dumps(app_id).decode()}'
        )
        return [entry for entry in found if entry.user_id == user_id and entry.seq in seqs]

    async def unpersisted_hold_entries(self, app_id: str, hold_id: str) -> list[LedgerEntry]:
        """A hold's entries that the worker has not persisted yet."""
        keys = account_keys(app_id, parse_hold_id(hold_id)[0])
        found = await self._scan_unpersisted(keys.unpersisted, f'"hold_id":"{hold_id}"')
        return sorted((e for e in found if e.app_id == app_id), key=lambda e: e.seq)

    async def _scan_unpersisted(self, unpersisted: str, needle: str) -> list[LedgerEntry]:
        """The entries of a shard's unpersisted hash whose JSON has `needle`: a scan of the
        shard's backlog, so rare."""
        found = []
        with outages():
            async for _, raw in self._redis.hscan_iter(unpersisted, count=1_000):
                if needle in raw:
                    found.append(LedgerEntry.from_json(raw))
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
        """Apply many adds and deducts in as few round trips as possible: one apply_batch.lua
        call per shard, all in one pipeline per node, plus one more round for the accounts
        that had to be rebuilt from the ledger.

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
                    idempotency_key=op.idempotency_key, expires_at_ms=op.expires_at_ms,
                )  # fmt: skip
            except TallyError as exc:
                outcomes[index] = exc
        pending = list(calls)
        for _ in range(HYDRATE_ATTEMPTS):
            if not pending:
                break
            missing = await self._run_batch(app, calls, pending, outcomes)
            if missing:
                missing = await self._hydrate_batch(app, calls, missing, outcomes)
            pending = missing
        gone = UnavailableError(GONE)
        return [gone if outcome is None else outcome for outcome in outcomes]

    async def _run_batch(
        self,
        app: AppContext,
        calls: dict[int, "_Call"],
        pending: list[int],
        outcomes: list[BatchOutcome | None],
    ) -> list[int]:
        """Run the pending operations, one apply_batch.lua call per shard, their outcomes into
        `outcomes`; returns those whose account is missing, in order."""
        shards: dict[int, list[int]] = {}
        for index in pending:
            shards.setdefault(calls[index].keys.shard, []).append(index)
        replies = await scripts.run_many(
            self._calls,
            self._scripts.apply_batch,
            [_batch_call(calls, indexes) for indexes in shards.values()],
            each=True,
            acks=self.hydration.acks,
        )
        missing = []
        for indexes, reply in zip(shards.values(), replies, strict=True):
            if isinstance(reply, UnavailableError):
                # The shard's call did not run, or its outcome is unknown (not replicated).
                for index in indexes:
                    outcomes[index] = reply
                continue
            for index, answer in zip(indexes, reply, strict=True):
                if answer[0] == "missing":
                    missing.append(index)
                    continue
                try:
                    outcomes[index] = calls[index].result(answer)
                except InsufficientCreditsError as exc:
                    self.refusals.count(app.app_id)
                    outcomes[index] = exc
                except TallyError as exc:
                    outcomes[index] = exc
        missing.sort()  # each account's operations go again in their order
        return missing

    async def _hydrate_batch(
        self,
        app: AppContext,
        calls: dict[int, "_Call"],
        missing: list[int],
        outcomes: list[BatchOutcome | None],
    ) -> list[int]:
        """Rebuild the missing operations' accounts; returns the operations to run again (the
        others are refused in `outcomes`)."""
        accounts = {calls[i].user_id: calls[i].keys for i in missing}
        try:
            await self.hydration.ensure(
                app.app_id, accounts, create=True, max_users=app.plan_max_users
            )
        except PlanLimitError as exc:
            # The users the plan has no room for are refused; the others were made.
            for index in missing:
                if calls[index].user_id in exc.refused:
                    outcomes[index] = exc
            return [i for i in missing if calls[i].user_id not in exc.refused]
        except UnavailableError as exc:
            # Only these wait for PostgreSQL; the others are applied and say so.
            for index in missing:
                outcomes[index] = exc
            return []
        return missing

    async def _apply(self, app: AppContext, call: "_Call") -> EntryResult:
        """Run one prepared entry, rebuilding its account from the ledger when Redis lacks it."""
        script = self._scripts.apply_entry
        acks = self.hydration.acks
        reply = await scripts.run(self._calls, script, call.script_keys, call.args, acks)
        if reply[0] == "missing":  # rare: straight to the script call above otherwise
            call_args = (call.script_keys, call.args)
            reply = await self.hydration.run(
                app, call.user_id, call.keys, script, call_args, missing=True
            )
        return call.result(reply)

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
        expires_at_ms: int | None = None,
        mode: str = "",
        grant: Any = "",
        parts: tuple[Any, ...] = (),
    ) -> "_Call":
        """Validate an entry and build its apply_entry.lua call; `mode`, `grant` and `parts`
        are the script's own (ARGV[8], ARGV[10] and ARGV[13..])."""
        check_text("user_id", user_id, MAX_USER_ID, required=True)
        check_amount(abs(delta))
        check_text("description", description, MAX_DESCRIPTION)
        check_text("reference_id", reference_id, MAX_REFERENCE_ID)
        check_text("Idempotency-Key", idempotency_key, MAX_IDEMPOTENCY_KEY)
        metadata_text = metadata_json(metadata)
        keys = account_keys(app.app_id, user_id)
        now_ms = time.time_ns() // 1_000_000
        ledger_id = new_ledger_id(keys.shard, now_ms)
        fields = {
            "ledger_id": ledger_id,
            "app_id": app.app_id,
            "user_id": user_id,
            "kind": kind,
            "description": description,
            "reference_id": reference_id,
            "metadata": orjson.Fragment(metadata_text),
            "idempotency_key": idempotency_key,
            "refund_of": refund_of,
            "created_at": now_ms,
        }
        if expires_at_ms is not None:
            if kind != "add":
                raise InvalidRequestError("expires_at applies to adds only")
            check_expiry(expires_at_ms, now_ms)
            fields["expires_at"] = expires_at_ms
            mode, grant = mode + "g", expires_at_ms
        entry = orjson.dumps(fields)
        script_keys = keys.script_keys()
        request = ""
        if idempotency_key is not None:
            script_keys.append(keys.idempotency(idempotency_key))
            mode += "i"
            identity = [kind, user_id, delta, description, reference_id, refund_of]
            if expires_at_ms is not None:
                identity.append(expires_at_ms)
            request = fingerprint(identity, metadata_text)
        if refund_of is not None:
            script_keys.append(keys.refund_marker(refund_of))
            mode += "r"
        member = ""
        if kind == "deduct" and app.auto_top_up:
            # Usage may start the account's auto top-up; refunds and take-backs never do.
            script_keys += (keys.top_up(), keys.top_up_due())
            mode += "t"
            member = keys.top_up_member()
        allowed = ""
        if kind in OPERATIONS:
            plan_keys, letter, allowed = counted(app, keys, now_ms)
            script_keys += plan_keys
            mode += letter
        args = (
            delta,
            -app.overdraft_limit,
            entry[:-1],
            request,
            self._idempotency_ttl,
            now_ms,
            ledger_id,
            mode,
            member,
            grant,
            watch_arg(app),
            allowed,
            *parts,
        )
        return _Call(
            user_id, kind, keys, script_keys, args, -app.overdraft_limit, refund_of,
            app.plan_monthly_operations, expires_at_ms,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Call:
    """One prepared apply_entry.lua call, and how to read its reply."""

    user_id: str
    kind: str
    keys: AccountKeys
    script_keys: list[str]
    args: tuple[Any, ...]
    floor: int
    refund_of: str | None
    allowed: int | None
    expires_at_ms: int | None

    def result(self, reply: list[Any]) -> EntryResult:
        status = reply[0]
        if status == "ok" or status == "replay_entry":
            return entry_result(reply)
        if status == "replay":
            replay = Replay.of(reply)
            return replay.entry_result(self.user_id, self.kind, expires_at_ms=self.expires_at_ms)
        if status == "insufficient":
            balance, available = int(reply[1]), int(reply[2])
            shown = available if available != balance else None
            raise InsufficientCreditsError(balance, self.floor, shown)
        if status == "conflict":
            raise IdempotencyConflictError()
        if status == "refunded":
            raise AlreadyRefundedError(str(self.refund_of), reply[1])
        if status == "overflow":
            raise InvalidRequestError(
                f"amount would take the balance above {MAX_AMOUNT}; balance is {reply[1]}"
            )
        if status == "grant_gone":
            raise ConflictError(f"grant {self.refund_of} has expired: nothing is left to refund")
        if status == "grant_spent":
            raise ConflictError(f"nothing is left of grant {self.refund_of} to refund")
        if status == "too_many_grants":
            raise ConflictError(
                f"the user has {MAX_GRANTS} active grants, the most one account may have"
            )
        if status == "plan_limit":
            raise PlanLimitError("monthly_operations", int(reply[1]), self.allowed or 0)
        raise RuntimeError(f"apply_entry.lua returned {reply!r}")


def _batch_call(calls: dict[int, _Call], indexes: list[int]) -> scripts.Call:
    """apply_batch.lua's keys and arguments for these operations of one shard, in order."""
    keys: list[str] = []
    args: list[Any] = []
    for index in indexes:
        call = calls[index]
        keys += call.script_keys
        args += (len(call.script_keys), len(call.args), *call.args)
    return keys, args


def refund_moves(original: LedgerEntry) -> tuple[str, str, tuple[Any, ...]]:
    """apply_entry.lua's mode, refunded grant (ARGV[10]) and grant parts (ARGV[13..]) for a
    refund of `original`: which credits it moves. What is left of a refunded grant; grant
    credits back to the grants an entry took them from; a refunded add's credits that never
    expire before any grant's (a refund never makes expiring credits lasting)."""
    if original.expires_at_ms is not None:
        return "x", original.ledger_id, ()
    if original.amount > 0:
        return "p", "", ()
    parts = [(part["grant_id"], -int(part["amount"])) for part in original.grants or ()]
    return "", "", tuple(value for part in parts for value in part)


def entry_result(reply: list[Any]) -> EntryResult:
    """An "ok" or "replay_entry" reply of the scripts that post entries (lua/account.lua)."""
    stored = orjson.loads(reply[2])
    return EntryResult(
        ledger_id=stored["ledger_id"],
        user_id=stored["user_id"],
        kind=stored["kind"],
        amount=stored["amount"],
        balance_before=int(reply[1]),
        balance_after=stored["balance_after"],
        created_at_ms=stored["created_at"],
        replayed=reply[0] != "ok",
        top_up_started=reply[3] == 1,
        available=int(reply[4]) if len(reply) > 4 and reply[4] is not None else None,
        expires_at_ms=stored.get("expires_at"),
        hold_id=stored.get("hold_id"),
        held=stored.get("held"),
    )


def check_expiry(expires_at_ms: int, now_ms: int) -> None:
    if not now_ms < expires_at_ms <= now_ms + MAX_GRANT_MS:
        raise InvalidRequestError("expires_at must be in the future, at most 10 years ahead")
