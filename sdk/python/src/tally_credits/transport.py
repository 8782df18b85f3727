"""Sending calls: what both transports share (`Core`), and the sync and async drivers.

`Core` turns a `Call` into an `httpx.Request` and an answer into a result or an error; the
retry policy (`retry.py`) decides about attempts. The two drivers only do the I/O.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from .endpoints import Call, Reply
from .errors import APIError, TallyError, error_for_status
from .retry import RetryPolicy
from .version import __version__

T = TypeVar("T")

DEFAULT_BASE_URL = "http://127.0.0.1:8000"


class _Secret:
    """Holds the API key; shows nothing of it in a repr, a str or a traceback's locals."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<hidden>"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("the API key is not picklable")


class Core:
    """The configuration both clients share and the request/answer handling around it."""

    def __init__(
        self,
        api_key: str | None,
        base_url: str | None,
        timeout: float | httpx.Timeout,
        policy: RetryPolicy,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("TALLY_API_KEY")
        if not key:
            raise ValueError("no API key: pass api_key= or set TALLY_API_KEY")
        url = (base_url or os.environ.get("TALLY_URL") or DEFAULT_BASE_URL).rstrip("/")
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError("base_url must start with http:// or https://")
        self._key = _Secret(key)
        self.base_url = url
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.policy = policy

    def describe(self, name: str) -> str:
        return (
            f"{name}(base_url={self.base_url!r}, api_key=<hidden>, "
            f"max_retries={self.policy.max_retries})"
        )

    def build(self, client: httpx.Client | httpx.AsyncClient, call: Call[Any]) -> httpx.Request:
        """The request every attempt of `call` sends, built once."""
        headers = {
            "Authorization": f"Bearer {self._key.reveal()}",
            "Accept": "application/json",
            "User-Agent": f"tally-credits-sdk/{__version__} python-httpx/{httpx.__version__}",
        }
        content = None
        if call.body is not None:
            # Strict JSON, as Tally takes it: NaN and Infinity are refused here, not sent.
            content = json.dumps(
                call.body, allow_nan=False, ensure_ascii=False, separators=(",", ":")
            ).encode()
            headers["Content-Type"] = "application/json"
        if call.idempotency_key is not None:
            headers["Idempotency-Key"] = call.idempotency_key
        return client.build_request(
            call.method,
            self.base_url + call.path,
            params=dict(call.params) if call.params is not None else None,
            content=content,
            headers=headers,
            timeout=self.timeout,
        )

    def finish(self, call: Call[T], response: httpx.Response) -> T:
        """The result of `call` from its last answer, or the error it stands for."""
        reply = _reply(response)
        if reply.status in call.accept:
            try:
                return call.parse(reply)
            except (KeyError, TypeError, ValueError) as exc:
                # Not Tally's answer (a proxy's page, a truncated body): say so, with its id.
                raise APIError(
                    f"HTTP {reply.status}: the answer is not what Tally sends ({exc!r})",
                    status=reply.status,
                    request_id=reply.request_id,
                    body=reply.body,
                ) from exc
        raise _error(reply, response)


def _reply(response: httpx.Response) -> Reply:
    try:
        body = response.json()
    except ValueError:
        body = None
    return Reply(
        status=response.status_code,
        body=body if isinstance(body, Mapping) else {},
        request_id=response.headers.get("X-Request-Id"),
        replayed=response.headers.get("Idempotent-Replayed", "").lower() == "true",
    )


def _error(reply: Reply, response: httpx.Response) -> TallyError:
    message = reply.body.get("error")
    if not isinstance(message, str) or not message:
        # Not Tally's JSON (a proxy's page, say): the status line and the start of the text.
        snippet = response.text[:200].strip()
        message = f"HTTP {reply.status} {response.reason_phrase}" + (
            f": {snippet}" if snippet else ""
        )
    cls = error_for_status(reply.status)
    return cls(message, status=reply.status, request_id=reply.request_id, body=reply.body)


class SyncTransport:
    def __init__(self, core: Core, http_client: httpx.Client | None) -> None:
        self.core = core
        self._owns_client = http_client is None
        self.client = http_client or httpx.Client(timeout=core.timeout)

    def execute(self, call: Call[T]) -> T:
        attempts = self.core.policy.attempts(self.core.build(self.client, call))
        step = next(attempts)
        while True:
            outcome: httpx.Response | httpx.TransportError | None = None
            if isinstance(step, httpx.Request):
                try:
                    outcome = self.client.send(step)
                except httpx.TransportError as exc:
                    outcome = exc
            else:
                time.sleep(step)
            try:
                step = attempts.send(outcome)
            except StopIteration as done:
                response: httpx.Response = done.value
                return self.core.finish(call, response)

    def close(self) -> None:
        if self._owns_client:
            self.client.close()


class AsyncTransport:
    def __init__(self, core: Core, http_client: httpx.AsyncClient | None) -> None:
        self.core = core
        self._owns_client = http_client is None
        self.client = http_client or httpx.AsyncClient(timeout=core.timeout)

    async def execute(self, call: Call[T]) -> T:
        attempts = self.core.policy.attempts(self.core.build(self.client, call))
        step = next(attempts)
        while True:
            outcome: httpx.Response | httpx.TransportError | None = None
            if isinstance(step, httpx.Request):
                try:
                    outcome = await self.client.send(step)
                except httpx.TransportError as exc:
                    outcome = exc
            else:
                await asyncio.sleep(step)
            try:
                step = attempts.send(outcome)
            except StopIteration as done:
                response: httpx.Response = done.value
                return self.core.finish(call, response)

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()
