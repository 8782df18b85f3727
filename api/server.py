"""The HTTP protocol `tally serve` runs: uvicorn's (httptools), with the hot routes (api.hot)
answered where their requests are parsed, without an ASGI cycle.

uvicorn's ASGI cycle (a scope, a RequestResponseCycle, receive and send, their messages and
its checks of every header) costs ~13 µs of CPU per request: a quarter of a deduct's Python
(docs/performance.md). Whatever this protocol does not answer itself goes through that cycle
to the ASGI app, unchanged: every other route, an upgrade, `Expect: 100-continue`, a path or
query a parser would read differently, and a request pipelined behind one still unanswered
(uvicorn queues it, so answers keep their order).
"""

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from api.app import TallyApp
from api.credits import MAX_BATCH_BYTES
from api.hot import Call, ClientLeft, Headers, Route
from engine.errors import PayloadTooLargeError

log = logging.getLogger("api.errors")


class _HotCall(Call):
    """A hot request on its connection: its body as the parser hands it over, and what
    uvicorn's protocol asks of the request it is answering (`keep_alive`, `response_complete`).
    """

    __slots__ = ("_waiter", "cap", "complete", "keep_alive", "left", "received",
                 "response_complete")  # fmt: skip

    def __init__(self, method: str, path: str, query: bytes, keep_alive: bool, cap: int) -> None:
        super().__init__(method, path, query, None)
        self.keep_alive = keep_alive
        self.cap = cap
        self.received = bytearray()  # grown in place: a body may come in many small chunks
        self.complete = False
        self.left = False
        self.response_complete = False
        self._waiter: asyncio.Future[None] | None = None

    async def body(self, limit: int) -> bytes:
        self.check_length(limit)
        while True:
            if self.left:
                raise ClientLeft
            if len(self.received) > limit:
                raise PayloadTooLargeError(f"request body is larger than {limit} bytes")
            if self.complete:
                return bytes(self.received)
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    def feed(self, chunk: bytes) -> None:
        # Past the largest body any hot route takes, the rest is dropped: the answer is a 413.
        if len(self.received) <= self.cap and not self.response_complete:
            self.received += chunk
        self._wake()

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def lose(self) -> None:
        self.left = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class TallyProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        app = self.app
        while not isinstance(app, TallyApp) and app is not None:
            app = getattr(app, "app", None)  # uvicorn's own middleware wraps the app
        self._tally = app
        engine = None if app is None else getattr(app.state, "engine", None)
        self._engine = engine
        self._cap = 0 if engine is None else max(MAX_BATCH_BYTES, engine.settings.max_body_bytes)

    def on_headers_complete(self) -> None:
        hot = self._hot()
        if hot is None:
            super().on_headers_complete()
            return
        call, route = hot
        self.cycle = call  # type: ignore[assignment]  # what uvicorn reads of a cycle, it has
        task = self.loop.create_task(self._serve(call, route, self.headers))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def _hot(self) -> tuple[_HotCall, Route] | None:
        """The request as a hot call, if this protocol answers it; None for uvicorn's cycle."""
        if self._tally is None or self._engine is None:
            return None
        target, _, query = self.url.partition(b"?")
        found = self._tally.hot.by_bytes.get((self.parser.get_method(), target))
        if found is None:
            return None
        if self.cycle is not None and not self.cycle.response_complete:
            return None  # pipelined behind a request still being answered: uvicorn queues it
        if (
            self.expect_100_continue
            or b"#" in self.url  # a fragment: uvicorn's parser drops it, a partition would not
            or self.parser.should_upgrade()
            or self.limit_concurrency is not None
        ):
            return None
        method, path, route = found
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        return _HotCall(method, path, query, keep_alive, self._cap), route

    def _current(self) -> _HotCall | None:
        """The request being parsed, if this protocol is answering it."""
        cycle: object = self.cycle
        return cycle if type(cycle) is _HotCall else None

    def on_body(self, body: bytes) -> None:
        call = self._current()
        if call is None:
            super().on_body(body)
        else:
            call.feed(body)

    def on_message_complete(self) -> None:
        call = self._current()
        if call is None:
            super().on_message_complete()
        else:
            call.finish()

    def connection_lost(self, exc: Exception | None) -> None:
        call = self._current()
        if call is not None:
            call.lose()
            self.cycle = None  # type: ignore[assignment]  # uvicorn's cycle has nothing to do
        super().connection_lost(exc)

    async def _serve(self, call: _HotCall, route: Route, headers: Headers) -> None:
        assert self._tally is not None and self._engine is not None
        try:
            answered = await self._tally.hot.answer(self._engine, route, call, headers)
            if answered is None or self.transport.is_closing():
                return  # the client left: nobody reads an answer
            if self.flow.write_paused:
                await self.flow.drain()  # a client that does not read waits, as in uvicorn
            self.transport.write(self._response(call, *answered))
        except BaseException:
            log.exception("unhandled error answering %s %s", call.method, call.path)
            self.transport.close()
            raise
        call.response_complete = True
        if not call.keep_alive:
            self.transport.close()
        self.on_response_complete()

    def _response(self, call: _HotCall, status: int, headers: Headers, body: bytes) -> bytes:
        # What uvicorn's cycle writes for the same ASGI messages, in one write.
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content += (name, b": ", value, b"\r\n")
        for name, value in headers:
            content += (name, b": ", value, b"\r\n")
        if not call.keep_alive:
            content.append(b"connection: close\r\n")
        content += (b"\r\n", body)
        return b"".join(content)
