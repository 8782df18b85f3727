"""Holds: reserve credits before work whose cost is known only afterwards, then capture what it
cost (the rest is released) or release it all. Each is one script call (lua/hold.lua,
lua/settle_hold.lua); an unsettled hold expires by itself (lua/account.lua)."""

import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from engine.bridge import Bridge
from engine.errors import (
    ConflictError,
    IdempotencyConflictError,
    InsufficientCreditsError,
    InvalidRequestError,
    NotFoundError,
    PlanLimitError,
    UnavailableError,
)
from engine.events.watch import watch_arg
from engine.holds.ids import hold_id_of, new_hold_id, parse_hold_id
from engine.ledger.checks import check_amount, check_text, metadata_json
from engine.ledger.credits import Credits, entry_result
from engine.ledger.defaults import HYDRATE_ATTEMPTS
from engine.ledger.hydration import GONE
from engine.ledger.idempotency import Replay, fingerprint
from engine.ledger.repository import LedgerRepository
from engine.models import (
    MAX_DESCRIPTION,
    MAX_IDEMPOTENCY_KEY,
    MAX_REFERENCE_ID,
    MAX_USER_ID,
    AppContext,
    EntryResult,
    Hold,
    HoldResult,
    LedgerEntry,
)
from engine.plans.operations import counted
from engine.settings import Settings
from engine.store.keys import AccountKeys, account_keys, new_ledger_id
from engine.store.redis import outages
from engine.store.scripts import SCRIPTS

MAX_TTL_SECONDS = 86_400
DEFAULT_TTL_SECONDS = 300
MAX_HOLDS = 1000  # as lua/account.lua
# How a settled hold ended stays in Redis this long (then PostgreSQL answers): past the longest
# hold's expiry by a day.
_END_KEPT_MS = (MAX_TTL_SECONDS + 86_400) * 1000
_ENDED = {"deduct": "captured", "release": "released", "hold_expire": "expired"}


class Holds:
    def __init__(
        self,
        redis: Redis,
        credits: Credits,
        repository: LedgerRepository,
        bridge: Bridge,
        settings: Settings,
    ) -> None:
        self._redis = redis
        self._scripts = SCRIPTS
        self._credits = credits
        self._repository = repository
        self._bridge = bridge
        self._idempotency_ttl = settings.idempotency_ttl_seconds

    async def create(
        self,
        app: AppContext,
        user_id: str,
        amount: int,
        *,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        description: str | None = None,
        reference_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> HoldResult:
        check_text("user_id", user_id, MAX_USER_ID, required=True)
        check_amount(amount)
        if isinstance(ttl_seconds, bool) or not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
            raise InvalidRequestError(f"ttl_seconds must be an integer from 1 to {MAX_TTL_SECONDS}")
        check_text("description", description, MAX_DESCRIPTION)
        check_text("reference_id", reference_id, MAX_REFERENCE_ID)
        check_text("Idempotency-Key", idempotency_key, MAX_IDEMPOTENCY_KEY)
        metadata_text = metadata_json(metadata)
        keys = account_keys(app.app_id, user_id)
        hold_id, token = new_hold_id(user_id)
        now_ms = time.time_ns() // 1_000_000
        expires_ms = now_ms + ttl_seconds * 1000
        ledger_id = new_ledger_id(keys.shard, now_ms)
        head = _head(ledger_id, app, user_id, "hold", now_ms, description, idempotency_key)
        head |= {"reference_id": reference_id, "metadata": orjson.Fragment(metadata_text)}
        head |= {"hold_id": hold_id, "expires_at": expires_ms}
        identity = ["hold", user_id, amount, ttl_seconds, description, reference_id]
        mode, script_keys, request = _idempotency(keys, idempotency_key, identity, metadata_text)
        # A hold is one of the app's operations, as a deduct is.
        plan_keys, letter, allowed = counted(app, keys, now_ms)
        script_keys += plan_keys
        mode += letter
        args = (
            amount, -app.overdraft_limit, orjson.dumps(head)[:-1], request,
            self._idempotency_ttl, now_ms, ledger_id, mode, token,
            expires_ms, watch_arg(app), allowed,
        )  # fmt: skip
        reply = await self._credits.hydration.run(
            app, user_id, keys, self._scripts.hold, (script_keys, args)
        )
        status = reply[0]
        if status == "plan_limit":
            raise PlanLimitError(
                "monthly_operations", int(reply[1]), app.plan_monthly_operations or 0
            )
        if status == "insufficient":
            raise InsufficientCreditsError(int(reply[1]), -app.overdraft_limit, int(reply[2]))
        if status == "too_many_holds":
            raise ConflictError(f"the user has {MAX_HOLDS} active holds, the most one may have")
        if status == "conflict":
            raise IdempotencyConflictError()
        if status == "replay":
            replay = Replay.of(reply)
            made = Hold(
                hold_id=hold_id_of(replay.extra or "", user_id), user_id=user_id, amount=amount,
                status="active", expires_at_ms=replay.created_at_ms + ttl_seconds * 1000,
                created_at_ms=replay.created_at_ms, description=description,
                reference_id=reference_id, metadata=metadata, ledger_id=replay.ledger_id,
            )  # fmt: skip
            return HoldResult(made, replay.balance_before, replay.available, True)
        entry = LedgerEntry.from_json(reply[2])
        available = int(reply[4]) if reply[4] is not None else int(reply[1])
        return HoldResult(_hold(entry, "active"), int(reply[1]), available, status != "ok")

    async def capture(
        self,
        app: AppContext,
        hold_id: str,
        amount: int | None = None,
        *,
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> EntryResult:
        """Spend `amount` of the hold (all of it by default) and release the rest: one entry of
        kind deduct with the hold_id."""
        if amount is not None:
            check_amount(amount)
        return await self._settle(app, hold_id, amount, description, idempotency_key)

    async def release(
        self,
        app: AppContext,
        hold_id: str,
        *,
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> EntryResult:
        return await self._settle(app, hold_id, 0, description, idempotency_key)

    async def _settle(
        self,
        app: AppContext,
        hold_id: str,
        amount: int | None,
        description: str | None,
        idempotency_key: str | None,
    ) -> EntryResult:
        check_text("description", description, MAX_DESCRIPTION)
        check_text("Idempotency-Key", idempotency_key, MAX_IDEMPOTENCY_KEY)
        user_id, token = parse_hold_id(hold_id)
        keys = account_keys(app.app_id, user_id)
        kind = "release" if amount == 0 else "deduct"
        now_ms = time.time_ns() // 1_000_000
        ledger_id = new_ledger_id(keys.shard, now_ms)
        # The script appends the hold_id (and what the hold held) to the settling entry.
        head = _head(ledger_id, app, user_id, kind, now_ms, description, idempotency_key)
        identity = [kind, hold_id, amount, description]
        mode, script_keys, request = _idempotency(keys, idempotency_key, identity)
        member = ""
        if kind == "deduct" and app.auto_top_up:
            script_keys += (keys.top_up(), keys.top_up_due())
            mode += "t"
            member = keys.top_up_member()
        # In the order lua/account.lua's open() reads them: the end record comes last.
        script_keys.append(keys.hold_end(token))
        mode += "e"
        args = (
            "" if amount is None else amount, token, orjson.dumps(head)[:-1], request,
            self._idempotency_ttl, now_ms, ledger_id, mode,
            _END_KEPT_MS, member, watch_arg(app),
        )  # fmt: skip
        reply = await self._credits.hydration.run(
            app, user_id, keys, self._scripts.settle_hold, (script_keys, args)
        )
        status = reply[0]
        if status in ("ok", "replay_entry"):
            return entry_result(reply)
        if status == "replay":
            replay = Replay.of(reply)
            held = -int(replay.extra or 0)
            return replay.entry_result(user_id, kind, hold_id=hold_id, held=held)
        if status == "conflict":
            raise IdempotencyConflictError()
        if status == "too_much":
            raise InvalidRequestError(f"amount is more than the hold's {reply[1]} credits")
        if status == "ended":
            outcome, _, by = reply[1].partition(" ")
            raise ConflictError(f"hold {hold_id} was already {outcome} (ledger entry {by})")
        hold = await self._ended(app, hold_id)
        if hold is None:
            raise NotFoundError(f"no hold {hold_id}")
        if hold.status == "expired":
            raise ConflictError(f"hold {hold_id} expired at {_iso(hold.expires_at_ms)}")
        raise ConflictError(f"hold {hold_id} was already {hold.status}")

    async def get(self, app: AppContext, hold_id: str) -> Hold:
        user_id, _ = parse_hold_id(hold_id)
        for hold in await self.active(app, user_id):
            if hold.hold_id == hold_id:
                return hold
        found = await self._ended(app, hold_id)
        if found is None:
            raise NotFoundError(f"no hold {hold_id}")
        return found

    async def active(self, app: AppContext, user_id: str) -> list[Hold]:
        """The user's active holds, soonest expiry first; what is due expires first."""
        check_text("user_id", user_id, MAX_USER_ID, required=True)
        keys = account_keys(app.app_id, user_id)
        for _ in range(HYDRATE_ATTEMPTS):
            with outages():
                exists, due = await self._redis.hmget(keys.account, "balance", "due")
            if exists is None:
                hydration = self._credits.hydration
                if not await hydration.ensure(app.app_id, {user_id: keys}, create=False):
                    return []
                continue
            if due is not None and int(due) <= time.time_ns() // 1_000_000:
                await self._credits.expire_due(app, user_id)
            holds = await self._read_active(keys)
            if holds is not None:
                return holds
        raise UnavailableError(GONE)

    async def _read_active(self, keys: AccountKeys) -> list[Hold] | None:
        """None when the account left Redis since it was read (engine.ledger.eviction): its
        holds went with it."""
        with outages():
            pipe = self._redis.pipeline(transaction=True)
            pipe.exists(keys.account)
            pipe.hvals(keys.holds)
            exists, raw = await pipe.execute()
        if not exists:
            return None
        holds = [
            _hold(LedgerEntry.from_json(str(value).split(" ", 3)[3]), "active") for value in raw
        ]
        return sorted(holds, key=lambda hold: (hold.expires_at_ms, hold.created_at_ms))

    async def _ended(self, app: AppContext, hold_id: str) -> Hold | None:
        """A hold no longer in Redis, from its entries in PostgreSQL (or, while the worker
        catches up, in the outbox)."""
        # Both: the hold's own entry may be persisted while the one that settled it is queued.
        persisted = await self._bridge.call(self._repository.hold_entries, app.app_id, hold_id)
        queued = await self._credits.unpersisted_hold_entries(app.app_id, hold_id)
        entries = sorted({e.ledger_id: e for e in persisted + queued}.values(), key=lambda e: e.seq)
        made = next((e for e in entries if e.kind == "hold"), None)
        if made is None:
            return None
        # Not active in Redis and nothing settled it: it expired (its entry may be on its way).
        hold = _hold(made, "expired")
        for entry in entries:
            if entry.kind in _ENDED:
                captured = -entry.amount if entry.kind == "deduct" else None
                return replace(
                    hold, status=_ENDED[entry.kind], settled_by=entry.ledger_id, captured=captured
                )
        return hold


def _head(
    ledger_id: str,
    app: AppContext,
    user_id: str,
    kind: str,
    now_ms: int,
    description: str | None,
    idempotency_key: str | None,
) -> dict[str, Any]:
    """An entry's fields in the order the scripts expect (ledger_id first)."""
    return {
        "ledger_id": ledger_id,
        "app_id": app.app_id,
        "user_id": user_id,
        "kind": kind,
        "description": description,
        "reference_id": None,
        "metadata": None,
        "idempotency_key": idempotency_key,
        "refund_of": None,
        "created_at": now_ms,
    }


def _idempotency(
    keys: AccountKeys, idempotency_key: str | None, identity: list[Any], metadata_text: str = ""
) -> tuple[str, list[str], str]:
    """The script's mode, keys and request fingerprint as far as idempotency goes."""
    script_keys = keys.script_keys()
    if idempotency_key is None:
        return "", script_keys, ""
    script_keys.append(keys.idempotency(idempotency_key))
    return "i", script_keys, fingerprint(identity, metadata_text)


def _hold(entry: LedgerEntry, status: str) -> Hold:
    return Hold(
        hold_id=entry.hold_id or "",
        user_id=entry.user_id,
        amount=entry.held or 0,
        status=status,
        expires_at_ms=entry.expires_at_ms or 0,
        created_at_ms=entry.created_at_ms,
        description=entry.description,
        reference_id=entry.reference_id,
        metadata=entry.metadata,
        ledger_id=entry.ledger_id,
    )


def _iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).isoformat(timespec="seconds")
