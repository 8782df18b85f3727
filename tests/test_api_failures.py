"""What the API answers when its backing services fail."""

import httpx
import pytest
from starlette.routing import Route

from api.app import create_app
from engine.settings import Settings
from tests.conftest import ApiServer, AppUnderTest, tally_env
from tests.servers import RedisServer


def test_redis_down_is_503_with_retry_after(settings: Settings, test_app: AppUnderTest) -> None:
    dead = RedisServer()  # never started: nothing listens on its port
    env = tally_env(settings) | {"TALLY_REDIS_URL": dead.url}
    server = ApiServer(env)
    try:
        headers = {"Authorization": f"Bearer {test_app.api_key}"}
        for method, path in [("POST", "/credits/deduct"), ("GET", "/credits/balance?user_id=u")]:
            response = httpx.request(
                method, server.url + path, json={"user_id": "u", "amount": 1}, headers=headers
            )
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "1"
            assert response.json() == {
                "success": False,
                "error": "Redis is unavailable; retry shortly",
            }
    finally:
        server.stop()
        dead.stop()


@pytest.mark.anyio
async def test_unexpected_errors_are_500_json_without_traceback(settings: Settings) -> None:
    app = create_app(settings)

    async def broken(request: object) -> None:
        raise RuntimeError("secret internals")

    app.router.routes.append(Route("/broken", broken))
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://tally") as client:
        response = await client.get("/broken")
    assert response.status_code == 500
    assert response.json() == {"success": False, "error": "Internal server error"}
    assert "secret" not in response.text and "Traceback" not in response.text


@pytest.mark.parametrize("path", ["/credits/add", "/credits/deduct"])
def test_redis_restart_is_survived_without_restarting_the_api(
    settings: Settings, test_app: AppUnderTest, path: str
) -> None:
    own = RedisServer().start()
    server = ApiServer(tally_env(settings) | {"TALLY_REDIS_URL": own.url})
    try:
        headers = {"Authorization": f"Bearer {test_app.api_key}"}
        body = {"user_id": "u", "amount": 1}
        assert (
            httpx.post(server.url + "/credits/add", json=body, headers=headers).status_code == 200
        )
        own.kill()
        assert httpx.post(server.url + path, json=body, headers=headers).status_code == 503
        restarted = RedisServer(own.root)
        restarted.port = own.port
        restarted.start()
        codes = [
            httpx.post(server.url + path, json=body, headers=headers).status_code for _ in range(5)
        ]
        assert codes[-1] in (200, 402)
        restarted.stop()
    finally:
        server.stop()
        own.stop()
