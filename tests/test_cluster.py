"""Tally on a real Redis Cluster (3 masters, 3 replicas), each test on servers of its own:
shards over every master, a hot user, the outbox of every node, a resharding under load, and
a master killed under load with and without replicated acknowledgements (WAIT)."""

import json
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest
import redis

from engine.accounts.apps import Apps
from engine.accounts.repository import AppRepository
from engine.settings import Settings
from engine.store.db import migrate, open_pool
from engine.store.keys import SHARDS, account_keys, outbox_key, shard_of
from engine.store.redis import sync_client
from engine.vault.keyring import keyring
from tests.conftest import ApiServer, WorkerProcess, fire, tally, tally_env
from tests.servers import RedisCluster, RedisServer
from tests.test_ledger import ledger, wait_until


@dataclass
class ClusterStack:
    cluster: RedisCluster
    settings: Settings
    api: ApiServer
    api_key: str
    app_id: str
    workers: list[WorkerProcess] = field(default_factory=list)

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return httpx.Client(base_url=self.api.url, headers=headers, timeout=30)

    def redis(self) -> redis.Redis:
        return sync_client(self.settings.redis_url, cluster=True)

    def master_of(self, user: str) -> RedisServer:
        """The node that is the master of the user's slot now."""
        node = self.redis().get_node_from_key(account_keys(self.app_id, user).account)  # type: ignore[attr-defined]
        return next(n for n in self.cluster.nodes if n.port == node.port)

    def replica_of(self, master: RedisServer) -> RedisServer:
        info = redis.Redis(port=master.port).info("replication")
        return next(n for n in self.cluster.nodes if n.port == info["slave0"]["port"])


def _own_database(settings: Settings) -> str:
    """A database of its own on the suite's PostgreSQL: what a stack's Redis loses here (the
    failover tests lose entries on purpose) must not show in the suite's reconciliations."""
    name = f"cluster_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = settings.database_url.rsplit("/", 1)[0] + "/" + name
    pool = open_pool(url, 1, wait=True)
    migrate(pool)
    pool.close()
    return url


def _stack(settings: Settings, **changes: Any) -> Iterator[ClusterStack]:
    cluster = RedisCluster().start()
    queue = RedisServer().start()
    stack = None
    try:
        cluster_settings = settings.model_copy(
            update={
                "redis_url": cluster.url,
                "redis_cluster": True,
                "queue_redis_url": queue.url,
                "database_url": _own_database(settings),
                **changes,
            }
        )
        pool = open_pool(cluster_settings.database_url, 1, wait=True)
        app, new_key = Apps(AppRepository(pool, keyring(settings))).create("cluster")
        pool.close()
        api = ApiServer(tally_env(cluster_settings))
        stack = ClusterStack(cluster, cluster_settings, api, new_key.api_key, app.app_id)
        yield stack
    finally:
        if stack:
            for worker in stack.workers:
                worker.stop()
            stack.api.stop()
        queue.stop()
        cluster.stop()


@pytest.fixture(scope="module")
def shared(settings: Settings) -> Iterator[ClusterStack]:
    yield from _stack(settings)


def _drain(stack: ClusterStack) -> None:
    tally(stack.settings, "worker", "--burst")


def _deduct(client: httpx.Client, user: str, key: str, amount: int = 1) -> httpx.Response:
    return client.post(
        "/credits/deduct",
        json={"user_id": user, "amount": amount},
        headers={"Idempotency-Key": key},
    )


def test_the_64_shards_spread_over_every_master(shared: ClusterStack) -> None:
    r = shared.redis()
    owners = {r.get_node_from_key(outbox_key(shard)).port for shard in range(SHARDS)}  # type: ignore[attr-defined]
    masters = {node.port for node in shared.cluster.masters()}
    assert owners == masters and len(masters) == 3
    # Every key of one account, and its shard's outbox, in one slot: one script call each.
    keys = account_keys(shared.app_id, "someone")
    slots = {r.keyslot(key) for key in [*keys.script_keys(), keys.idempotency("k")]}  # type: ignore[attr-defined]
    assert len(slots) == 1


def test_500_concurrent_deducts_on_one_hot_user_are_exact(shared: ClusterStack) -> None:
    with shared.client() as client:
        assert (
            client.post("/credits/add", json={"user_id": "hot", "amount": 1000}).status_code == 200
        )
    responses = fire(
        shared.api.url, shared.api_key,
        [("/credits/deduct", {"user_id": "hot", "amount": 1}) for _ in range(500)],
    )  # fmt: skip
    assert [response.status_code for response in responses] == [200] * 500
    assert sorted(response.json()["balance_after"] for response in responses) == list(
        range(500, 1000)
    )
    _drain(shared)
    rows = [row for row in ledger(shared.settings, shared.app_id) if row["user_id"] == "hot"]
    assert [row["seq"] for row in rows] == list(range(1, 502))
    assert rows[-1]["balance_after"] == 500


def test_the_outbox_drains_from_every_node(shared: ClusterStack) -> None:
    users = [f"spread-{i}" for i in range(200)]
    responses = fire(
        shared.api.url, shared.api_key,
        [("/credits/add", {"user_id": user, "amount": 5}) for user in users],
    )  # fmt: skip
    assert {response.status_code for response in responses} == {200}
    r = shared.redis()
    waiting: dict[int, int] = {}
    for shard in {shard_of(shared.app_id, user) for user in users}:
        port = r.get_node_from_key(outbox_key(shard)).port  # type: ignore[attr-defined]
        waiting[port] = waiting.get(port, 0) + r.xlen(outbox_key(shard))
    assert len(waiting) == 3 and all(waiting.values())  # no worker yet: entries on every master
    _drain(shared)
    rows = [row for row in ledger(shared.settings, shared.app_id) if row["user_id"] in users]
    assert len(rows) == 200 and len({row["ledger_id"] for row in rows}) == 200
    assert sum(r.xlen(outbox_key(shard)) for shard in range(SHARDS)) == 0


class _Load:
    """Deducts of 1 credit on `users`, from `threads` threads, until stopped. Each has its own
    Idempotency-Key and is retried with it after a 503, as the API asks; every 200 is kept."""

    def __init__(self, stack: ClusterStack, users: list[str], threads: int = 4) -> None:
        self._stack = stack
        self._users = users
        self._stop = threading.Event()
        self.acknowledged: dict[str, str] = {}  # idempotency key -> ledger_id
        self.unavailable: list[float] = []  # when each 503 came
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(threads)]

    def __enter__(self) -> "_Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self, number: int) -> None:
        with self._stack.client() as client:
            turn = 0
            while not self._stop.is_set():
                user = self._users[(turn * 7 + number) % len(self._users)]
                turn += 1
                key = str(uuid.uuid4())
                while True:  # the same key until the outcome is known, even after a stop
                    try:
                        response = _deduct(client, user, key)
                    except httpx.HTTPError as exc:
                        self.errors.append(repr(exc))
                        return
                    if response.status_code != 503:
                        break
                    with self._lock:
                        self.unavailable.append(time.monotonic())
                    time.sleep(0.05)
                if response.status_code == 200:
                    with self._lock:
                        self.acknowledged[key] = response.json()["ledger_id"]
                else:
                    self.errors.append(f"{response.status_code} {response.text}")
                    return


def _acknowledged_rows(stack: ClusterStack, load: _Load) -> dict[str, int]:
    """How many ledger rows each acknowledged deduct has."""
    rows = ledger(stack.settings, stack.app_id)
    counts = {str(row["ledger_id"]): 0 for row in rows}
    for row in rows:
        counts[str(row["ledger_id"])] += 1
    return {ledger_id: counts.get(ledger_id, 0) for ledger_id in load.acknowledged.values()}


def _reconcile(stack: ClusterStack) -> dict[str, Any]:
    done = tally(stack.settings, "reconcile", "--json", check=False)
    report: dict[str, Any] = json.loads(done.stdout)
    assert done.returncode == (3 if report["drifted"] else 0)
    return report


def _fund(stack: ClusterStack, users: list[str], amount: int) -> None:
    with stack.client() as client:
        for user in users:
            assert (
                client.post("/credits/add", json={"user_id": user, "amount": amount}).status_code
                == 200
            )


def test_a_resharding_under_load_loses_and_doubles_nothing(shared: ClusterStack) -> None:
    users = [f"moving-{i}" for i in range(40)]
    _fund(shared, users, 100_000)
    masters = shared.cluster.masters()
    source, target = masters[0], masters[1]
    ids = {node.port: redis.Redis(port=node.port).cluster("MYID").decode() for node in masters}
    with _Load(shared, users) as load:
        time.sleep(0.5)
        subprocess.run(
            [
                "redis-cli", "--cluster", "reshard", f"127.0.0.1:{source.port}",
                "--cluster-from", ids[source.port], "--cluster-to", ids[target.port],
                "--cluster-slots", "3000", "--cluster-yes", "--cluster-pipeline", "100",
            ],
            check=True, stdout=subprocess.DEVNULL, timeout=120,
        )  # fmt: skip
        time.sleep(0.5)
    assert not load.errors, load.errors[:3]
    assert len(load.acknowledged) > 100
    _drain(shared)
    assert set(_acknowledged_rows(shared, load).values()) == {1}  # each exactly once
    report = _reconcile(shared)
    assert report["drifted"] == 0, report["drift"][:3]


def _failover_under_load(stack: ClusterStack) -> tuple[_Load, float]:
    """Deducts run on users of one master; its replica hangs (SIGSTOP) and loses its link for
    a second, so the master takes writes no replica has; then the master is SIGKILLed, the
    replica resumes and is promoted, and the dead master is restarted as its replica. Returns
    the load and how long the API answered 503."""
    stack.workers.append(WorkerProcess(tally_env(stack.settings)))
    users = [f"failover-{i}" for i in range(60)]
    _fund(stack, users, 1_000_000)
    victim = stack.master_of(users[0])
    users = [user for user in users if stack.master_of(user) is victim]
    replica = stack.replica_of(victim)
    assert replica.process and victim.process
    with _Load(stack, users) as load:
        time.sleep(1.0)
        # The replica hangs and the master drops its link: what the master takes from now on
        # reaches no replica (a hung replica alone would still find it in its socket).
        replica.process.send_signal(signal.SIGSTOP)
        redis.Redis(port=victim.port).client_kill_filter(_type="replica")
        time.sleep(1.0)
        victim.kill()
        replica.process.send_signal(signal.SIGCONT)
        wait_until(lambda: _role(replica) == "master", 30, "the replica's promotion")
        stack.cluster.wait_until_ok(replicated=False)
        # Every slot is served again: healthy, the dead master listed as such.
        wait_until(lambda: _healthz(stack)["status"] == "ok", 10, "/healthz after the failover")
        states = {node["node"]: node["state"] for node in _healthz(stack)["redis_nodes"]}
        assert states[f"127.0.0.1:{victim.port}"] == "unavailable", states
        # Its supervisor restarts the dead master: it rejoins as the new master's replica (with
        # WAIT 1, the new master takes writes again once it has one).
        victim.start()
        stack.cluster.wait_until_ok()
        time.sleep(2.0)
        before = len(load.acknowledged)
        time.sleep(2.0)
        assert len(load.acknowledged) > before, load.errors[:3]  # carries on by itself
    assert not load.errors, load.errors[:3]
    window = max(load.unavailable) - min(load.unavailable) if load.unavailable else 0.0
    _drain(stack)
    return load, window


def _healthz(stack: ClusterStack) -> dict[str, Any]:
    health: dict[str, Any] = httpx.get(stack.api.url + "/healthz").json()
    return health


def _role(node: RedisServer) -> str:
    role: str = redis.Redis(port=node.port).info("replication")["role"]
    return role


@pytest.fixture
def waiting_stack(settings: Settings) -> Iterator[ClusterStack]:
    yield from _stack(settings, redis_wait_replicas=1, redis_wait_timeout_ms=200)


@pytest.fixture
def unwaiting_stack(settings: Settings) -> Iterator[ClusterStack]:
    yield from _stack(settings)


def test_a_master_killed_under_load_loses_no_acknowledged_entry_with_wait(
    waiting_stack: ClusterStack,
) -> None:
    stack = waiting_stack
    load, window = _failover_under_load(stack)
    assert load.unavailable, "the hung replica made the master's writes wait and fail"
    assert window < 20, f"503 for {window:.1f}s"
    assert set(_acknowledged_rows(stack, load).values()) == {1}  # every 200 persisted, once
    report = _reconcile(stack)
    assert report["drifted"] == 0, report["drift"][:3]


def test_without_wait_a_killed_master_loses_acknowledged_entries_and_reconciliation_says_so(
    unwaiting_stack: ClusterStack,
) -> None:
    stack = unwaiting_stack
    _failover_under_load(stack)
    report = _reconcile(stack)
    # What the master acknowledged while its replica hung died with it in Redis; the worker
    # had already written some of it to PostgreSQL: reconciliation reports those accounts.
    assert report["drifted"] > 0
    assert all(entry["user_id"].startswith("failover-") for entry in report["drift"])


def test_wait_on_a_single_redis_with_a_replica(settings: Settings) -> None:
    """TALLY_REDIS_WAIT_REPLICAS without a cluster: a write is acknowledged once its replica
    has it; with the replica hung, 503 within the timeout, and the retry applies it once."""
    primary = RedisServer().start()
    replica = RedisServer().start()
    api = None
    try:
        redis.Redis(port=replica.port).replicaof("127.0.0.1", primary.port)
        linked = lambda: redis.Redis(port=replica.port).info("replication")["master_link_status"]  # noqa: E731
        wait_until(lambda: linked() == "up", 10, "the replica")
        own = settings.model_copy(
            update={
                "redis_url": primary.url,
                "redis_wait_replicas": 1,
                "redis_wait_timeout_ms": 300,
                "database_url": _own_database(settings),
            }
        )
        pool = open_pool(own.database_url, 1, wait=True)
        _, new_key = Apps(AppRepository(pool, keyring(settings))).create("wait")
        pool.close()
        api = ApiServer(tally_env(own))
        headers = {"Authorization": f"Bearer {new_key.api_key}"}
        with httpx.Client(base_url=api.url, headers=headers, timeout=30) as client:
            assert (
                client.post("/credits/add", json={"user_id": "u", "amount": 10}).status_code == 200
            )
            assert redis.Redis(port=replica.port).keys("*acct*")  # the replica has it already
            assert replica.process
            replica.process.send_signal(signal.SIGSTOP)
            try:
                started = time.monotonic()
                response = _deduct(client, "u", "once")
                assert response.status_code == 503 and "Idempotency-Key" in response.json()["error"]
                assert time.monotonic() - started < 2
            finally:
                replica.process.send_signal(signal.SIGCONT)
            wait_until(lambda: _deduct(client, "u", "once").status_code == 200, 10, "the retry")
            again = _deduct(client, "u", "once")
            assert again.status_code == 200 and again.json()["balance_after"] == 9  # once
    finally:
        if api:
            api.stop()
        replica.stop()
        primary.stop()


def test_status_and_healthz_show_every_node(shared: ClusterStack) -> None:
    health = httpx.get(shared.api.url + "/healthz").json()
    assert health["status"] == "ok" and health["redis"] == "ok"
    roles = sorted(node["role"] for node in health["redis_nodes"])
    assert roles == ["master"] * 3 + ["replica"] * 3
    assert {node["state"] for node in health["redis_nodes"]} == {"ok"}
    status = json.loads(tally(shared.settings, "status", "--json").stdout)
    ports = {int(node["node"].rsplit(":", 1)[1]) for node in status["redis_nodes"]}
    assert ports == {node.port for node in shared.cluster.nodes}
    masters = [node for node in status["redis_nodes"] if node["role"] == "master"]
    assert all(node["connected_replicas"] == 1 for node in masters)
    text = tally(shared.settings, "status").stdout
    assert text.count("master") == 3 and text.count("replica") == 3
