"""Throwaway Redis and PostgreSQL servers on loopback, for the tests and the local stack.

Each lives in its own temporary directory on a free port and is removed on stop. PostgreSQL
refuses to run as root, so as root its commands run as the `postgres` user.
"""

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


# Every temporary directory a server of this process made: none may outlive the test run.
CREATED: list[Path] = []


def _temporary(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    CREATED.append(path)
    return path


class RedisServer:
    def __init__(
        self, root: Path | None = None, *, appendonly: bool = False, cluster: bool = False
    ) -> None:
        self.root = Path(root) if root else _temporary("tally-redis-")
        self.port = free_port()
        self.appendonly = appendonly
        self.cluster = cluster
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [
                binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.root),
                "--save", "",
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "everysec",
                "--maxmemory-policy", "noeviction",
                "--logfile", str(self.root / "redis.log"),
                *self._cluster_options(),
            ],
        )  # fmt: skip
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.05)
        client.close()
        return self

    def _cluster_options(self) -> list[str]:
        if not self.cluster:
            return []
        # A node is declared failed after 2 s: failovers in tests take seconds, not minutes,
        # and a node slowed by a busy machine is not taken for dead.
        return [
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.root / "nodes.conf"),
            # The bus port is the client port + 10000 unless given, past 65535 for high ports.
            "--cluster-port", str(free_port()),
            "--cluster-node-timeout", "2000",
        ]  # fmt: skip

    def kill(self) -> None:
        """Stop abruptly, like a crash: no final save."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


class RedisCluster:
    """A Redis Cluster of `masters` masters with one replica each, every node its own
    redis-server on loopback, made by `redis-cli --cluster create`. `url` names every node
    (Tally's TALLY_REDIS_URL takes a comma-separated list of seeds)."""

    def __init__(self, masters: int = 3, replicas: int = 1, *, appendonly: bool = False) -> None:
        self.root = _temporary("tally-redis-cluster-")
        self.nodes = [
            RedisServer(self.root / str(index), cluster=True, appendonly=appendonly)
            for index in range(masters * (1 + replicas))
        ]
        self.replicas = replicas

    @property
    def url(self) -> str:
        return ",".join(node.url.removesuffix("/0") for node in self.nodes)

    def start(self) -> "RedisCluster":
        try:
            for node in self.nodes:
                node.root.mkdir()
                node.start()
            binary = shutil.which("redis-cli") or "/usr/bin/redis-cli"
            subprocess.run(
                [
                    binary, "--cluster", "create",
                    *(f"127.0.0.1:{node.port}" for node in self.nodes),
                    "--cluster-replicas", str(self.replicas), "--cluster-yes",
                ],
                check=True, stdout=subprocess.DEVNULL, timeout=60,
            )  # fmt: skip
            self.wait_until_ok(120)
        except BaseException:
            self.stop()  # nothing of a cluster that did not start may outlive it
            raise
        return self

    def wait_until_ok(self, timeout: float = 60.0, *, replicated: bool = True) -> None:
        """Until every live node says the cluster is ok and, if `replicated`, every master
        has its replicas (a master promoted by a failover has none)."""
        deadline = time.monotonic() + timeout
        while True:
            live = [node for node in self.nodes if node.process and node.process.poll() is None]
            if all(self._ok(node, replicated) for node in live):
                return
            if time.monotonic() > deadline:
                states = {node.port: self._state(node) for node in live}
                raise TimeoutError(f"the Redis Cluster did not become ok: {states}")
            time.sleep(0.1)

    def _state(self, node: RedisServer) -> str:
        client = redis.Redis(port=node.port, decode_responses=True)
        try:
            info, role = client.cluster("INFO"), client.info("replication")
            return f"{info.get('cluster_state')} {role['role']} {role.get('connected_slaves')}" \
                f" {role.get('master_link_status')}"
        except redis.RedisError as exc:
            return repr(exc)
        finally:
            client.close()

    def _ok(self, node: RedisServer, replicated: bool) -> bool:
        client = redis.Redis(port=node.port, decode_responses=True)
        try:
            info = client.cluster("INFO")
            state = info.get("cluster_state") if isinstance(info, dict) else None
            if state != "ok":
                return False
            if not replicated:
                return True
            role = client.info("replication")
            if role["role"] == "master":
                return int(role["connected_slaves"]) >= self.replicas
            return role.get("master_link_status") == "up"
        except redis.RedisError:
            return False
        finally:
            client.close()

    def masters(self) -> list[RedisServer]:
        """The live nodes that are masters now (a failover changes which)."""
        found = []
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            client = redis.Redis(port=node.port, decode_responses=True)
            try:
                if client.info("replication")["role"] == "master":
                    found.append(node)
            finally:
                client.close()
        return found

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def pg_bin(name: str) -> str:
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    for directory in reversed(versions):
        if os.path.exists(os.path.join(directory, name)):
            return os.path.join(directory, name)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(
            f"{name} not found: install PostgreSQL (apt-get install postgresql)"
        )
    return found


class PostgresServer:
    def __init__(self, root: Path | None = None, *, dbname: str = "tally") -> None:
        self.root = Path(root) if root else _temporary("tally-pg-")
        self.data = self.root / "data"
        self.port = free_port()
        self.dbname = dbname
        self._as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.dbname}"

    def _run(self, *command: str) -> None:
        subprocess.run(
            [*self._as_postgres, *command], check=True, stdout=subprocess.DEVNULL, cwd=self.root
        )

    def start(self) -> "PostgresServer":
        if not self.data.exists():
            if self._as_postgres:
                shutil.chown(self.root, "postgres")
            self._run(
                pg_bin("initdb"), "-D", str(self.data), "-U", "postgres",
                "--auth=trust", "--encoding=UTF8", "--no-sync",
            )  # fmt: skip
            fresh = True
        else:
            fresh = False
        # fsync off: these servers are thrown away; a killed process still loses nothing
        # committed, only a machine crash would.
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "postgres.log"),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip
        if fresh:
            admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.dbname}"')
        return self

    def halt(self) -> None:
        """Stop the server, keeping its data for a later start()."""
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.halt()
        shutil.rmtree(self.root, ignore_errors=True)


# localstripe's own launcher listens on IPv6 and saves its state to /tmp on every write: this
# one listens on loopback and keeps the state in memory.
_LOCALSTRIPE = """
import sys
from aiohttp import web
from localstripe import resources
resources.Store.dump_to_disk = lambda self: None
from localstripe.server import app
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


class LocalStripe:
    """localstripe, a stateful Stripe fake: customers, SetupIntents, PaymentMethods and
    PaymentIntents behave as Stripe's test mode does, test cards included."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LocalStripe":
        self.process = subprocess.Popen(
            [sys.executable, "-c", _LOCALSTRIPE, str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
