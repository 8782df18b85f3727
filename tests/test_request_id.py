"""X-Request-Id: returned on every answer and carried by every log line of its request."""

import io
import json
import logging

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.app import create_app
from engine.logs import JsonFormatter
from engine.settings import Settings


@pytest.mark.anyio
async def test_request_ids_are_returned_and_bound_to_log_lines(settings: Settings) -> None:
    app = create_app(settings)
    logger = logging.getLogger("tests.request_id")

    async def noisy(request: Request) -> Response:
        logger.warning("working on it")
        return Response(status_code=204)

    app.router.routes.append(Route("/noisy", noisy))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    transport = httpx.ASGITransport(app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://tally") as client:
            given = await client.get("/noisy", headers={"X-Request-Id": "req-42"})
            made = [await client.get("/noisy") for _ in range(2)]
            refused = await client.get("/noisy", headers={"X-Request-Id": "no spaces please"})
            missing = await client.get("/nowhere")
    finally:
        logger.removeHandler(handler)
    assert given.headers["X-Request-Id"] == "req-42"
    ids = [response.headers["X-Request-Id"] for response in made]
    assert all(ids) and ids[0] != ids[1]
    replaced = refused.headers["X-Request-Id"]
    assert replaced and replaced != "no spaces please" and replaced not in ids
    assert missing.status_code == 404 and missing.headers["X-Request-Id"]
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["request_id"] for line in lines] == ["req-42", *ids, replaced]
    assert {line["message"] for line in lines} == {"working on it"}
    assert {line["level"] for line in lines} == {"warning"}


@pytest.mark.anyio
async def test_the_hot_routes_access_lines_carry_their_request_id(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"access_log": True}))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("api.access")
    access.addHandler(handler)
    previous = access.level
    access.setLevel(logging.INFO)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app)
            async with httpx.AsyncClient(transport=transport, base_url="http://tally") as client:
                answer = await client.get(
                    "/credits/balance?user_id=u1", headers={"X-Request-Id": "hot-7"}
                )
    finally:
        access.removeHandler(handler)
        access.setLevel(previous)
    assert answer.status_code == 401  # no key: still a line, with its id
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["message"].split(" ")[:3], line.get("request_id")) for line in lines] == [
        (["GET", "/credits/balance", "401"], "hot-7")
    ]
