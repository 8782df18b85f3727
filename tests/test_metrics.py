"""GET /metrics summed across `tally serve --workers N`, the worker's metrics port, and
GET /readyz, against real servers."""

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from engine.metrics import registry
from engine.settings import Settings
from engine.store.scripts import SCRIPTS, library_name
from tests.conftest import ApiServer, AppUnderTest, TallyProcess, WorkerProcess, redis_of, tally_env
from tests.servers import free_port, wait_for_port
from tests.test_ledger import wait_until

ROOT = Path(__file__).resolve().parent.parent
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    # A client per request: a new connection, which either process may accept.
    response = httpx.get(f"{url}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: Samples, name: str) -> list[float]:
    return [found for (sample, _), found in samples.items() if sample == name]


def operations(samples: Samples, app_id: str, operation: str, result: str) -> float:
    labels = {"app_id": app_id, "operation": operation, "result": result}
    return value(samples, "tally_credit_operations_total", **labels)


def requests(samples: Samples, route: str, method: str, status: int) -> float:
    labels = {"route": route, "method": method, "status": str(status)}
    return value(samples, "tally_http_request_duration_seconds_count", **labels)


class Serve(TallyProcess):
    def __init__(self, env: dict[str, str], workers: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(["serve", "--port", str(self.port), "--workers", str(workers)], env)
        wait_for_port(self.port)


def serve_env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    # TMPDIR: where `tally serve` makes its private directory, for the test to look at.
    env = tally_env(settings) | {"TMPDIR": str(tmp_path)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


@pytest.fixture
def two_processes(settings: Settings, tmp_path: Path) -> Iterator[Serve]:
    server = Serve(serve_env(settings, tmp_path), workers=2)
    yield server
    server.stop()


def post(url: str, path: str, key: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    # A client per request: a new connection, which either process may accept.
    return httpx.post(
        f"{url}{path}", json=body, headers={"Authorization": f"Bearer {key}", **headers}
    )


def serving_processes(directory: Path) -> set[str]:
    """The pids whose files hold a timed request."""
    pids = set()
    for path in directory.glob("histogram_*.db"):
        for key, found, *_ in MmapedDict.read_all_values_from_file(str(path)):
            if "tally_http_request_duration_seconds_bucket" in key and found:
                pids.add(path.stem.split("_")[-1])
    return pids


def test_metrics_sum_the_counts_of_every_api_process(
    two_processes: Serve, test_app: AppUnderTest, tmp_path: Path
) -> None:
    url, key = two_processes.url, test_app.api_key
    for _ in range(3):
        assert post(url, "/credits/add", key, {"user_id": "u", "amount": 100}).status_code == 200
    for number in range(7):
        headers = {"Idempotency-Key": "once"} if number == 0 else {}
        answer = post(url, "/credits/deduct", key, {"user_id": "u", "amount": 10}, **headers)
        assert answer.status_code == 200
    replay = post(url, "/credits/deduct", key, {"user_id": "u", "amount": 10},
                  **{"Idempotency-Key": "once"})  # fmt: skip
    assert replay.headers["Idempotent-Replayed"] == "true"
    for _ in range(2):
        refused = post(url, "/credits/deduct", key, {"user_id": "u", "amount": 10_000})
        assert refused.status_code == 402
    hold = httpx.get(f"{url}/credits/holds/hold_nope", headers={"Authorization": f"Bearer {key}"})
    assert httpx.get(f"{url}/no/such/path").status_code == 404

    (directory,) = tmp_path.glob("tally-metrics-*")
    # Until both processes have served something: which one accepts is the kernel's choice.
    for _ in range(500):
        if len(serving_processes(directory)) == 2:
            break
        httpx.get(f"{url}/healthz")
    assert len(serving_processes(directory)) == 2
    time.sleep(1.5)  # each process adds its counts to the shared files every second

    for _ in range(6):  # whichever process answers, it sums both
        samples = scrape(url)
        app = test_app.app_id
        assert operations(samples, app, "add", "applied") == 3
        assert operations(samples, app, "deduct", "applied") == 7
        assert operations(samples, app, "deduct", "replayed") == 1
        assert operations(samples, app, "deduct", "insufficient_credits") == 2
        assert requests(samples, "/credits/add", "POST", 200) == 3
        assert requests(samples, "/credits/deduct", "POST", 200) == 8
        assert requests(samples, "/credits/deduct", "POST", 402) == 2
        assert requests(samples, "/credits/holds/{hold_id}", "GET", hold.status_code) == 1
        assert requests(samples, "unmatched", "GET", 404) == 1
        assert not any("hold_nope" in str(labels) for _, labels in samples)
        deducts = {"route": "/credits/deduct", "method": "POST", "status": "200", "le": "+Inf"}
        assert value(samples, "tally_http_request_duration_seconds_bucket", **deducts) == 8
        # The outbox, read from Redis at the scrape: no worker runs, the entries wait.
        depths = series(samples, "tally_outbox_depth")
        assert len(depths) == 64 and sum(depths) >= 10
        assert len(series(samples, "tally_outbox_oldest_age_seconds")) == 64

    two_processes.stop()
    assert not directory.exists(), "tally serve left its metrics directory behind"


def test_one_process_counts_in_its_memory(
    api_server: ApiServer, client: httpx.Client, test_app: AppUnderTest
) -> None:
    client.post("/credits/add", json={"user_id": "u", "amount": 5})
    answer = client.post(
        "/credits/batch",
        json={"operations": [
            {"type": "add", "user_id": "u", "amount": 5},
            {"type": "deduct", "user_id": "u", "amount": 1},
            {"type": "deduct", "user_id": "u", "amount": 1_000},
        ]},
    )  # fmt: skip
    assert [result["success"] for result in answer.json()["results"]] == [True, True, False]
    ledger_id = client.post("/credits/deduct", json={"user_id": "u", "amount": 1}).json()
    refunded = client.post("/credits/refund", json={"ledger_id": ledger_id["ledger_id"]})
    assert refunded.status_code == 200
    samples = scrape(api_server.url)
    app = test_app.app_id
    assert operations(samples, app, "add", "applied") == 2
    assert operations(samples, app, "deduct", "applied") == 2
    assert operations(samples, app, "deduct", "insufficient_credits") == 1
    assert operations(samples, app, "refund", "applied") == 1


def test_an_operators_multiprocess_directory_is_used_and_kept(
    settings: Settings, test_app: AppUnderTest, tmp_path: Path
) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = serve_env(settings, tmp_path) | {"PROMETHEUS_MULTIPROC_DIR": str(directory)}
    server = Serve(env, workers=2)
    try:
        post(server.url, "/credits/add", test_app.api_key, {"user_id": "u", "amount": 1})
        time.sleep(1.5)  # the process that served it adds its counts to the files every second
        samples = scrape(server.url)
        assert operations(samples, test_app.app_id, "add", "applied") == 1
        assert not list(tmp_path.glob("tally-metrics-*"))
    finally:
        server.stop()
    assert list(directory.glob("*.db")), "the operator's directory is theirs to clear"


def test_the_worker_serves_its_metrics_on_its_own_port(
    settings: Settings, client: httpx.Client
) -> None:
    port = free_port()
    worker = WorkerProcess(tally_env(settings) | {"TALLY_METRICS_PORT": str(port)})
    try:
        wait_for_port(port)
        for _ in range(5):
            assert client.post("/credits/add", json={"user_id": "w", "amount": 1}).is_success
        url = f"http://127.0.0.1:{port}"

        def persisted() -> bool:
            samples = scrape(url)
            return value(samples, "tally_entries_persisted_total") >= 5

        wait_until(persisted, 30, "the worker to persist 5 entries")
        samples = scrape(url)
        assert value(samples, "tally_flush_duration_seconds_count") > 0
        assert len(series(samples, "tally_outbox_depth")) == 64
    finally:
        worker.stop()


def test_ready_when_redis_answers_and_holds_every_script(
    api_server: ApiServer, settings: Settings
) -> None:
    client = redis_of(settings)
    try:
        client.script_flush()
        client.function_flush()
        answer = httpx.get(f"{api_server.url}/readyz")
        assert answer.status_code == 200
        assert answer.json() == {"ready": True, "redis": "ok", "scripts": "ok", "missing": []}
        assert all(client.script_exists(*(script.sha for script in SCRIPTS.all())))
        assert client.function_list(library=library_name())
    finally:
        client.close()


def test_not_ready_without_redis_and_metrics_still_answer(settings: Settings) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    server = ApiServer(tally_env(settings) | {"TALLY_REDIS_URL": closed})
    try:
        answer = httpx.get(f"{server.url}/readyz")
        assert answer.status_code == 503
        assert answer.json() == {
            "ready": False, "redis": "unavailable", "scripts": "unknown", "missing": ["redis"],
        }  # fmt: skip
        samples = scrape(server.url)
        assert not series(samples, "tally_outbox_depth")
        assert requests(samples, "/readyz", "GET", 503) == 1
    finally:
        server.stop()


def test_no_metric_is_labelled_with_a_user() -> None:
    labels = {label for metric in _defined() for label in metric._labelnames}
    assert labels and not {"user_id", "user", "path"} & labels


def test_the_grafana_dashboard_asks_only_for_exported_metrics() -> None:
    dashboard = json.loads((ROOT / "docs/grafana-dashboard.json").read_text())
    asked = {
        re.sub(r"_(total|bucket|count|sum)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"tally_[a-z_]+", target["expr"])
    }
    exported = {family.name for metric in _defined() for family in metric.describe()}
    exported |= {"tally_outbox_depth", "tally_outbox_oldest_age_seconds"}
    assert asked == exported


def _defined() -> list[MetricWrapperBase]:
    return [m for m in vars(registry).values() if isinstance(m, MetricWrapperBase)]
