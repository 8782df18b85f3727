"""What `hold()` answers: a hold to work under, settled once.

    with tally.hold("user_001", 500, description="AI generation") as h:
        cost = run_model(max_credits=h.amount)
        h.capture(cost)  # spend `cost`, give the rest of the 500 back

`Tally.hold` makes the hold when called; `AsyncTally.hold` when its answer is awaited or
entered (`async with tally.hold(...) as h`). A block left without a capture or a release
releases the whole hold, so nothing is spent that was not captured; a block left by an
exception releases it too, and the exception goes on as it was. A release that finds the hold
already settled or expired (409) has nothing left to do and is not an error. Any other failure
of that release is raised after a block that ended normally (the hold may still be active until
it expires), and after an exception is noted on that exception (`add_note`), not raised in its
place. Without the block, settle the hold yourself: unsettled, it expires after its
`ttl_seconds` and holds nothing from then on.
"""

from __future__ import annotations

from collections.abc import Generator
from types import TracebackType
from typing import Any

from . import endpoints
from .errors import TallyError
from .models import CaptureResult, HoldCreated, ReleaseResult
from .transport import AsyncTransport, SyncTransport

Settlement = CaptureResult | ReleaseResult


def _moot(error: TallyError) -> bool:
    """A release refused because the hold is already captured, released or expired: it holds
    nothing any more, which is what the release was for."""
    return error.status == 409


def _note(exc: BaseException, hold_id: str, error: TallyError) -> None:
    exc.add_note(f"tally: releasing hold {hold_id} after this error failed too: {error}")


class _HoldFields:
    """What the hold's answer said, read-only, and how it was settled."""

    def __init__(self, created: HoldCreated) -> None:
        self.created = created
        # The capture or release made through this object, once one succeeded.
        self.settlement: Settlement | None = None

    @property
    def hold_id(self) -> str:
        return self.created.hold_id

    @property
    def user_id(self) -> str:
        return self.created.user_id

    @property
    def amount(self) -> int:
        """The credits held."""
        return self.created.amount

    @property
    def expires_at(self) -> str:
        return self.created.expires_at

    @property
    def balance(self) -> int:
        """The user's balance when the hold was made (a hold does not change it)."""
        return self.created.balance

    @property
    def available(self) -> int:
        """The balance less every active hold, this one included, when it was made."""
        return self.created.available

    @property
    def replayed(self) -> bool:
        return self.created.replayed

    @property
    def request_id(self) -> str | None:
        return self.created.request_id

    @property
    def settled(self) -> bool:
        """True once a capture or release through this object succeeded."""
        return self.settlement is not None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(hold_id={self.hold_id!r}, user_id={self.user_id!r}, "
            f"amount={self.amount!r}, expires_at={self.expires_at!r}, settled={self.settled!r})"
        )


class HoldHandle(_HoldFields):
    """A hold made by `Tally.hold`; a context manager (see the module's documentation)."""

    def __init__(self, transport: SyncTransport, created: HoldCreated) -> None:
        super().__init__(created)
        self._transport = transport

    def capture(
        self,
        amount: int | None = None,
        *,
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> CaptureResult:
        """Spend `amount` of the hold (all of it when None) and release the rest."""
        call = endpoints.capture_hold(self.hold_id, amount, description, idempotency_key)
        result = self._transport.execute(call)
        self.settlement = result
        return result

    def release(
        self, *, description: str | None = None, idempotency_key: str | None = None
    ) -> ReleaseResult:
        """Give the whole hold back; nothing is spent."""
        call = endpoints.release_hold(self.hold_id, description, idempotency_key)
        result = self._transport.execute(call)
        self.settlement = result
        return result

    def __enter__(self) -> HoldHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.settlement is not None:
            return
        try:
            self.release()
        except TallyError as error:
            if _moot(error):
                return
            if exc is None:
                raise
            _note(exc, self.hold_id, error)


class AsyncHoldHandle(_HoldFields):
    """A hold made by `AsyncTally.hold`; an async context manager, as `HoldHandle`."""

    def __init__(self, transport: AsyncTransport, created: HoldCreated) -> None:
        super().__init__(created)
        self._transport = transport

    async def capture(
        self,
        amount: int | None = None,
        *,
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> CaptureResult:
        """Spend `amount` of the hold (all of it when None) and release the rest."""
        call = endpoints.capture_hold(self.hold_id, amount, description, idempotency_key)
        result = await self._transport.execute(call)
        self.settlement = result
        return result

    async def release(
        self, *, description: str | None = None, idempotency_key: str | None = None
    ) -> ReleaseResult:
        """Give the whole hold back; nothing is spent."""
        call = endpoints.release_hold(self.hold_id, description, idempotency_key)
        result = await self._transport.execute(call)
        self.settlement = result
        return result

    async def __aenter__(self) -> AsyncHoldHandle:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.settlement is not None:
            return
        try:
            await self.release()
        except TallyError as error:
            if _moot(error):
                return
            if exc is None:
                raise
            _note(exc, self.hold_id, error)


class PendingHold:
    """What `AsyncTally.hold` answers: `await` it for the `AsyncHoldHandle`, or use it in
    `async with` (which makes the hold on entry and settles it on exit). The request is sent
    once however it is used; its Idempotency-Key is chosen when `hold` is called."""

    def __init__(self, transport: AsyncTransport, call: endpoints.Call[HoldCreated]) -> None:
        self._transport = transport
        self._call = call
        self._handle: AsyncHoldHandle | None = None

    async def _open(self) -> AsyncHoldHandle:
        if self._handle is None:
            created = await self._transport.execute(self._call)
            self._handle = AsyncHoldHandle(self._transport, created)
        return self._handle

    def __await__(self) -> Generator[Any, None, AsyncHoldHandle]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncHoldHandle:
        return await self._open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            await self._handle.__aexit__(exc_type, exc, tb)
