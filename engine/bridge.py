"""The one crossing between async code and blocking code."""

import asyncio
import contextvars
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")

# Calls to outside services (Stripe) take up to seconds and block a thread each: they get
# threads of their own, so that slow payments never hold up the hot path's key lookups.
_OUTSIDE_THREADS = 16
_RUN_TIMEOUT_SECONDS = 60


class Bridge:
    """The one crossing between async code and blocking code.

    The hot path is async, on one event loop; PostgreSQL, Stripe and RQ jobs block. From the
    loop, `call` runs a blocking call on a thread; from a thread, `run` runs async engine work
    on the loop and waits for it. The API's loop is uvicorn's; a worker or the CLI gets a loop
    of its own on a thread here, so its async Redis client is made once, not per job.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._thread: threading.Thread | None = None
        if loop is None:
            loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=loop.run_forever, name="engine-loop", daemon=True
            )
            self._thread.start()
        self.loop = loop
        self._outside = ThreadPoolExecutor(_OUTSIDE_THREADS, thread_name_prefix="outside")

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A blocking call (PostgreSQL), from the loop, on a thread."""
        return await self._in(None, fn, *args, **kwargs)

    async def call_outside(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A blocking call that may wait seconds on an outside service (Stripe)."""
        return await self._in(self._outside, fn, *args, **kwargs)

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Async engine work (Redis), from a thread, on the loop; waits for its result."""
        if self._thread is None and _on_loop(self.loop):
            work.close()
            raise RuntimeError("Bridge.run called on the event loop it would wait for")
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(_RUN_TIMEOUT_SECONDS)

    def close(self) -> None:
        self._outside.shutdown(wait=False, cancel_futures=True)
        if self._thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            self.loop.close()

    async def _in(
        self, executor: ThreadPoolExecutor | None, fn: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T:
        # The request id (engine.logs) follows the call onto its thread.
        context = contextvars.copy_context()
        call = partial(context.run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(executor, call)


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
