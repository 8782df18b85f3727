"""GET /openapi.json: valid OpenAPI 3.1, current in docs/, and true of the live API (fuzzed with
schemathesis against real Redis and PostgreSQL)."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi import checks
from starlette.routing import Mount

from api.app import create_app
from api.openapi import document
from tests.conftest import ApiServer, AppUnderTest

ROOT = Path(__file__).resolve().parent.parent


def test_docs_holds_the_current_document() -> None:
    current = document(create_app().routes)
    stored = json.loads((ROOT / "docs/openapi.json").read_text())
    assert stored == current, "docs/openapi.json is stale: tally openapi > docs/openapi.json"


def test_the_document_is_valid_openapi_3_1_and_describes_every_route() -> None:
    spec = document(create_app().routes)
    validate(spec)
    assert spec["openapi"] == "3.1.0"
    described = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    for route in create_app().routes:
        if isinstance(route, Mount):  # the dashboard's HTML pages, for browsers
            assert route.path == "/dashboard"
            continue
        for method in route.methods - {"HEAD"}:  # type: ignore[attr-defined]
            assert (route.path, method.lower()) in described  # type: ignore[attr-defined]
    deduct = spec["paths"]["/credits/deduct"]["post"]
    assert {"200", "402", "422", "503"} <= set(deduct["responses"])
    assert any(p["name"] == "Idempotency-Key" for p in deduct["parameters"])
    assert spec["paths"]["/client/balance"]["get"]["security"] == [{"client_token": []}]


def test_a_client_token_on_a_server_route_is_a_documented_403(
    api_server: ApiServer, credentials: dict[str, str]
) -> None:
    spec = document(create_app().routes)
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if operation.get("security") == [{"api_key": []}]:
                assert "403" in operation["responses"], f"{method} {path}"
    token = {"Authorization": f"Bearer {credentials['client_token']}"}
    refused = httpx.get(f"{api_server.url}/credits/balance", params={"user_id": "u"}, headers=token)
    assert refused.status_code == 403 and refused.json()["success"] is False


def test_served_without_a_key(api_server: ApiServer) -> None:
    answer = httpx.get(f"{api_server.url}/openapi.json")
    assert answer.status_code == 200
    assert answer.json() == json.loads((ROOT / "docs/openapi.json").read_text())


@pytest.fixture
def credentials(api_server: ApiServer, test_app: AppUnderTest) -> Iterator[dict[str, str]]:
    """A bearer for each security scheme: the app's key, and a token for one of its users."""
    key = test_app.api_key
    headers = {"Authorization": f"Bearer {key}"}
    httpx.post(f"{api_server.url}/credits/add", json={"user_id": "fuzz", "amount": 1_000},
               headers=headers)  # fmt: skip
    token = httpx.post(f"{api_server.url}/client-tokens", json={"user_id": "fuzz"},
                       headers=headers).json()["token"]  # fmt: skip
    yield {"api_key": key, "client_token": token}


# Every answer is a documented status with a documented body and headers, and never a 5xx.
# Whether input is refused is the input-rule tests' business: valid-looking input may be
# refused (an Idempotency-Key the fuzzer reuses, a user id with a control character) and
# invalid input refused with a status the fuzzer does not expect (413 for a huge body).
CHECKS = [
    not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]
# The copy in docs/, which test_served_without_a_key holds equal to what the server serves.
schema = schemathesis.openapi.from_path(ROOT / "docs/openapi.json")


@schema.parametrize()
# Derandomized: the same cases on every run, so a failure reproduces (and CI is not a lottery).
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_the_live_api_answers_as_documented(
    case: Any, api_server: ApiServer, credentials: dict[str, str]
) -> None:
    """No 5xx, and every answer (status, headers, body) matches the document."""
    security = case.operation.definition.raw.get("security") or [{}]
    scheme = next(iter(security[0]), None)
    headers = {"Authorization": f"Bearer {credentials[scheme]}"} if scheme else {}
    case.call_and_validate(base_url=api_server.url, headers=headers, checks=CHECKS)
