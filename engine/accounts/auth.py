"""Who is calling: API keys and client tokens, resolved to apps through short-lived in-process
caches, so the hot path makes no PostgreSQL round trip per request."""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from engine.accounts import client_tokens
from engine.accounts.apps import KEY_PATTERN, hash_key
from engine.accounts.repository import AppRepository
from engine.bridge import Bridge
from engine.errors import AuthenticationError, ForbiddenError, UnavailableError
from engine.models import App, AppContext

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_ENTRIES = 100_000
# With PostgreSQL down, a key already known keeps working this long before the next try, so the
# hot path neither stops nor waits on every request for a database that is not there.
_DEGRADED_SECONDS = 5.0
_LOOKUP_TIMEOUT = 0.5


@dataclass(frozen=True, slots=True)
class _Entry:
    app: AppContext | None  # None: no such key, or revoked
    refresh_after: float  # time.monotonic(): look it up again in the background from here...
    expires: float  # ...and stop trusting it from here


class KeyCache:
    """Resolves keys with about one PostgreSQL lookup per key per `ttl / 2` seconds per process.

    An entry older than half its ttl is refreshed in the background while it keeps serving, so
    requests never wait on the lookup under steady traffic; one older than `ttl` is not trusted
    and the request waits. A revoked key therefore stops working within `ttl` (under a second),
    except while PostgreSQL is unreachable: then known keys keep working and unknown ones get 503.
    """

    def __init__(self, repository: AppRepository, bridge: Bridge, ttl: float) -> None:
        self._repository = repository
        self._bridge = bridge
        self._ttl = ttl
        self._entries: dict[bytes, _Entry] = {}
        self._inflight: dict[bytes, asyncio.Task[_Entry]] = {}
        # Authorization headers already checked and hashed: the same few keys call all day.
        self._hashes: dict[str, bytes] = {}

    async def authenticate(self, authorization: str | None) -> AppContext:
        key_hash = self._hashes.get(authorization) if authorization else None
        if key_hash is None:
            key_hash = _hash_of(authorization)
            if len(self._hashes) >= _MAX_ENTRIES:
                self._hashes.clear()
            self._hashes[authorization] = key_hash  # type: ignore[index]  # checked above
        entry = self._entries.get(key_hash)
        now = time.monotonic()
        if entry is None or entry.expires <= now:
            entry = await self._refresh(key_hash, entry)
        elif entry.refresh_after <= now:
            self._refresh_in_background(key_hash, entry)
        if entry.app is None:
            raise AuthenticationError("invalid API key")
        return entry.app

    def _refresh_in_background(self, key_hash: bytes, entry: _Entry) -> None:
        if key_hash not in self._inflight:
            self._start(key_hash, entry)

    async def _refresh(self, key_hash: bytes, stale: _Entry | None) -> _Entry:
        task = self._inflight.get(key_hash) or self._start(key_hash, stale)
        return await asyncio.shield(task)

    def _start(self, key_hash: bytes, stale: _Entry | None) -> "asyncio.Task[_Entry]":
        task = asyncio.create_task(self._lookup(key_hash, stale))
        self._inflight[key_hash] = task
        task.add_done_callback(lambda _: self._inflight.pop(key_hash, None))
        return task

    async def _lookup(self, key_hash: bytes, stale: _Entry | None) -> _Entry:
        try:
            app = await self._bridge.call(self._repository.app_for_key, key_hash, _LOOKUP_TIMEOUT)
            ttl = self._ttl
        except UnavailableError:
            if stale is None or stale.app is None:
                raise
            log.warning(
                "PostgreSQL unreachable; serving a cached API key for %ss", _DEGRADED_SECONDS
            )
            app, ttl = stale.app, _DEGRADED_SECONDS
        if len(self._entries) >= _MAX_ENTRIES:
            self._entries.clear()
        now = time.monotonic()
        entry = _Entry(app, refresh_after=now + ttl / 2, expires=now + ttl)
        self._entries[key_hash] = entry
        return entry


def _hash_of(authorization: str | None) -> bytes:
    """The hash of the API key an Authorization header carries; refuses any other header."""
    if not authorization:
        raise AuthenticationError("missing API key: send Authorization: Bearer <key>")
    scheme, _, token = authorization.partition(" ")
    if token.startswith(client_tokens.PREFIX):
        raise ForbiddenError("a client token may only call /client/... endpoints")
    if scheme.lower() != "bearer" or not KEY_PATTERN.fullmatch(token):
        raise AuthenticationError("malformed Authorization header: expected Bearer tally_...")
    return hash_key(token)


@dataclass(frozen=True, slots=True)
class ClientSession:
    """What a valid client token grants: one user of one app."""

    app: App
    user_id: str


class AppCache:
    """Apps by id, and which origins any app allows, read at most once per `ttl` seconds each.

    Client tokens are checked against the app's current signing secret from here, so rotating
    the secret revokes tokens within `ttl`, as revoking a key does.
    """

    def __init__(self, repository: AppRepository, bridge: Bridge, ttl: float) -> None:
        self._repository = repository
        self._bridge = bridge
        self._ttl = ttl
        self._apps: dict[str, tuple[App | None, float]] = {}  # value, monotonic expiry
        self._origins: dict[str, tuple[bool, float]] = {}

    async def get(self, app_id: str) -> App | None:
        return await self._cached(self._apps, app_id, self._repository.get_app)

    def forget(self, app_id: str) -> None:
        """Read the app afresh next time: this process just changed it."""
        self._apps.pop(app_id, None)

    async def origin_allowed(self, origin: str) -> bool:
        return await self._cached(self._origins, origin, self._repository.origin_allowed)

    async def grants_origin(self, authorization: str | None, origin: str) -> bool:
        """Whether a browser at `origin` may read the answer to this request: the token's app
        allows the origin or, without a readable token, some app does (as for a preflight)."""
        _, _, token = (authorization or "").partition(" ")
        try:
            app = await self.get(client_tokens.read_unverified(token).app_id)
        except AuthenticationError:
            app = None
        if app is None:
            return await self.origin_allowed(origin)
        return origin in app.cors_origins

    async def client_session(self, authorization: str | None, origin: str | None) -> ClientSession:
        """The user a client token acts for; a browser's origin must be one the app allows."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.startswith(client_tokens.PREFIX):
            raise AuthenticationError(
                "missing client token: send Authorization: Bearer tct_... (POST /client-tokens)"
            )
        claims = client_tokens.read_unverified(token)
        app = await self.get(claims.app_id)
        if app is None or app.client_token_secret is None:
            raise AuthenticationError("invalid client token")
        client_tokens.verify(token, app.client_token_secret)
        if origin is not None and origin not in app.cors_origins:
            raise ForbiddenError(
                f"origin {origin} is not allowed for this app (tally apps update --cors-origins)"
            )
        return ClientSession(app, claims.user_id)

    async def _cached(
        self, table: dict[str, tuple[T, float]], key: str, load: Callable[[str], T]
    ) -> T:
        """table[key] if younger than the ttl, else load(key) on a thread and remember it."""
        cached = table.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        value = await self._bridge.call(load, key)
        if len(table) >= _MAX_ENTRIES:
            table.clear()
        table[key] = (value, time.monotonic() + self._ttl)
        return value
