"""The ledger at scale: the plain table (as migration 0009 left it) against the month-partitioned
one (0010), side by side on one PostgreSQL this script starts.

    python -m bench.ledger_scale [--rows 3000000] [--months 12] [--users 100000]

Both databases get the same rows, made by SQL (generate_series) over `--months` months, then:
the plans of a history page and of a lookup by ledger id, insert throughput through the
worker's own path (LedgerRepository.insert_entries, batches of 500) alternating between the
two, history and lookup latency, sizes, and how long migration 0010 takes to convert the plain
table. Prints figures and ratios (docs/scaling.md); asserts nothing.
"""

import argparse
import json
import random
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from engine.ledger.partitions import ensure_partitions, partition_name
from engine.ledger.repository import LedgerRepository
from engine.models import LedgerEntry
from engine.store.db import migrate, open_pool
from engine.store.keys import new_ledger_id
from tests.servers import PostgresServer

APP = "bench_app"
BATCH = 500
BEFORE_PARTITIONS = "0009_events_plans_limits"

# A version-7 id from created_at in SQL, as new_ledger_id makes them (random bits from md5).
_FILL = """
INSERT INTO ledger_entries (ledger_id, app_id, user_id, kind, amount, balance_after,
    description, reference_id, metadata, seq, created_at)
SELECT (lpad(to_hex((extract(epoch FROM at) * 1000)::bigint), 12, '0') || '7'
        || substr(h, 1, 3) || '8' || substr(h, 4, 15))::uuid,
    %(app)s, CASE WHEN %(heavy)s THEN 'heavy' ELSE 'user' || (i %% %(users)s) END,
    CASE WHEN i %% 4 = 0 THEN 'add' ELSE 'deduct' END,
    CASE WHEN i %% 4 = 0 THEN 30 ELSE -10 END, 1000, 'generation', 'ref-' || i,
    '{"model": "large"}', CASE WHEN %(heavy)s THEN i + 1 ELSE i / %(users)s + 1 END, at
FROM (SELECT i, md5(%(heavy)s::text || i) AS h,
        %(start)s::timestamptz + (i::float8 / %(rows)s) * %(span)s * interval '1 second' AS at
      FROM generate_series(0, %(rows)s - 1) AS i) g
"""

_HISTORY_PAGE = (
    "SELECT * FROM ledger_entries WHERE app_id = %s AND user_id = %s ORDER BY seq DESC LIMIT 50"
)
_BY_ID = "SELECT * FROM ledger_entries WHERE ledger_id = %s AND created_at BETWEEN %s AND %s"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger_scale", description=__doc__)
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--heavy", type=int, default=120_000, help="entries of one heavy user")
    parser.add_argument("--batches", type=int, default=200, help="insert batches per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reads", type=int, default=2_000)
    args = parser.parse_args()
    server = PostgresServer().start()
    try:
        _run(server, args)
    finally:
        server.stop()


def _run(server: PostgresServer, args: argparse.Namespace) -> None:
    admin = f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
    pools: dict[str, ConnectionPool] = {}
    for name in ("plain", "partitioned"):
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        pools[name] = open_pool(f"{admin.rsplit('/', 1)[0]}/{name}", 4, wait=True)
    now = datetime.now(UTC)
    span = args.months * 30 * 86_400
    start = datetime.fromtimestamp(now.timestamp() - span, UTC)
    print(
        f"ledger_scale: {args.rows:,} rows, {args.users:,} users, {args.months} months,"
        f" PostgreSQL {_version(admin)}"
    )
    for name, pool in pools.items():
        migrate(pool, until=BEFORE_PARTITIONS if name == "plain" else None)
        if name == "partitioned":  # the months the rows fall in, as the worker would have
            ensure_partitions(pool, months_ahead=args.months + 1, today=start.date())
        began = time.perf_counter()
        with pool.connection() as conn:
            conn.execute("INSERT INTO apps (app_id, name) VALUES (%s, 'bench')", (APP,))
            params = {"app": APP, "users": args.users, "start": start, "span": span}
            conn.execute(_FILL, params | {"rows": args.rows, "heavy": False})
            # One user with a long history spread over every month: a page of it is where a
            # Merge Append of the months' indexes pays.
            conn.execute(_FILL, params | {"rows": args.heavy, "heavy": True})
            conn.execute("VACUUM ANALYZE")
        print(f"  {name}: filled in {time.perf_counter() - began:.1f} s, {_size(pool)}")

    print("plans (partitioned):")
    _plans(pools["partitioned"], f"user{random.randrange(args.users)}", now)
    _plans(pools["partitioned"], "heavy", now)

    print(f"read latency, {args.reads} reads each, ms p50 / p99:")
    figures: dict[str, dict[str, float]] = {}
    for name, pool in pools.items():
        figures[name] = _read_latency(pool, args.users, args.reads)
    labels = {
        "history": "a user's history page (entries_between, 50 seqs)",
        "heavy_history": "a page anywhere in the heavy user's history",
        "find": "find_entry by a ledger id",
    }
    for key, label in labels.items():
        p50s = [figures[name][f"{key}_p50"] for name in ("plain", "partitioned")]
        p99s = [figures[name][f"{key}_p99"] for name in ("plain", "partitioned")]
        print(
            f"  {label}: plain {p50s[0]:.3f} / {p99s[0]:.3f}, partitioned {p50s[1]:.3f}"
            f" / {p99s[1]:.3f}, partitioned / plain {p50s[1] / p50s[0]:.2f} /"
            f" {p99s[1] / p99s[0]:.2f}"
        )
    print(f"insert throughput, insert_entries in batches of {BATCH}, rows/s:")
    rates: dict[str, list[float]] = {name: [] for name in pools}
    for round_ in range(args.rounds):
        for name in sorted(pools, key=lambda n: (n == "plain") == bool(round_ % 2)):
            rate = _insert_rate(pools[name], args.batches, args.users, round_)
            rates[name].append(rate)
            print(f"  round {round_ + 1} {name:<12} {rate:>10,.0f}")
    plain, partitioned = (statistics.median(rates[n]) for n in ("plain", "partitioned"))
    print(
        f"  median: plain {plain:,.0f}, partitioned {partitioned:,.0f},"
        f" partitioned / plain {partitioned / plain:.2f}"
    )

    rows = _count(pools["plain"])
    began = time.perf_counter()
    migrate(pools["plain"])
    took = time.perf_counter() - began
    print(
        f"migration 0010 on the plain table: {rows:,} rows in {took:.1f} s"
        f" ({rows / took:,.0f} rows/s)"
    )
    for pool in pools.values():
        pool.close()


def _plans(pool: ConnectionPool, user: str, now: datetime) -> None:
    with pool.connection() as conn:
        page = _explain(conn, _HISTORY_PAGE, (APP, user))
        top = conn.execute(
            "SELECT max(seq) FROM ledger_entries WHERE app_id = %s AND user_id = %s", (APP, user)
        ).fetchone()
        assert top is not None
        between = _explain(
            conn,
            "SELECT * FROM ledger_entries WHERE app_id = %s AND user_id = %s"
            " AND seq BETWEEN %s AND %s ORDER BY seq DESC",
            (APP, user, top[0] - 49, top[0]),
        )
        row = conn.execute(
            "SELECT ledger_id, created_at FROM ledger_entries WHERE created_at < %s"
            " ORDER BY created_at DESC LIMIT 1 OFFSET 1000",
            (now,),
        ).fetchone()
        assert row is not None
        day = 86_400
        at = row[1].timestamp()
        window = (
            datetime.fromtimestamp(at - day, UTC),
            datetime.fromtimestamp(at + day, UTC),
        )
        by_id = _explain(conn, _BY_ID, (row[0], *window))
    for label, nodes in (
        (f"{user}'s history page (ORDER BY seq DESC LIMIT 50)", page),
        (f"{user}'s history range (entries_between)", between),
        ("find_entry by a v7 id", by_id),
    ):
        scans = [n for n in nodes if "Scan" in n["Node Type"] and n.get("Actual Loops", 1)]
        kinds = sorted({n["Node Type"] for n in nodes if "Scan" not in n["Node Type"]})
        print(
            f"  {label}: {len(scans)} partitions read"
            f" ({', '.join(sorted({n['Node Type'] for n in scans}))}); above them: {kinds};"
            f" seq scans: {[n['Relation Name'] for n in scans if n['Node Type'] == 'Seq Scan']}"
        )


def _explain(conn: psycopg.Connection, query: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    row = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {query}", params).fetchone()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
    nodes: list[dict[str, Any]] = []

    def walk(node: dict[str, Any]) -> None:
        nodes.append(node)
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return nodes


def _insert_rate(pool: ConnectionPool, batches: int, users: int, round_: int) -> float:
    """Entries of random users now, as a flush writes them; 1% are refunds."""
    ledger = LedgerRepository(pool)
    rng = random.Random(round_)
    refundable = _refundable(pool, batches * BATCH // 100 + 1, round_)
    work: list[list[LedgerEntry]] = []
    for _ in range(batches):
        batch = []
        for _ in range(BATCH):
            now_ms = time.time_ns() // 1_000_000
            refund = refundable.pop() if rng.random() < 0.01 and refundable else None
            batch.append(
                LedgerEntry(
                    ledger_id=new_ledger_id(rng.randrange(64), now_ms),
                    app_id=APP, user_id=f"user{rng.randrange(users)}",
                    kind="refund" if refund else "deduct", amount=10 if refund else -10,
                    balance_after=1000, description="generation", reference_id=None,
                    metadata={"model": "large"}, idempotency_key=None, refund_of=refund,
                    seq=10_000_000 + rng.randrange(10**9), created_at_ms=now_ms,
                )
            )  # fmt: skip
        work.append(batch)
    began = time.perf_counter()
    for batch in work:
        ledger.insert_entries(batch, [])
    return batches * BATCH / (time.perf_counter() - began)


def _refundable(pool: ConnectionPool, count: int, round_: int) -> list[str]:
    """Distinct entries of the filled months, never refunded: each round takes its own."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT ledger_id::text FROM ledger_entries WHERE reference_id LIKE 'ref-%%'"
            " ORDER BY ledger_id OFFSET %s LIMIT %s",
            (round_ * count, count),
        ).fetchall()
    return [row[0] for row in rows]


def _read_latency(pool: ConnectionPool, users: int, reads: int) -> dict[str, float]:
    ledger = LedgerRepository(pool)
    rng = random.Random(7)
    with pool.connection() as conn:
        ids = [
            uuid.UUID(row[0])
            for row in conn.execute(
                "SELECT ledger_id::text FROM ledger_entries TABLESAMPLE SYSTEM (1) LIMIT %s",
                (reads,),
            ).fetchall()
        ]
        tops = {
            row[0]: row[1]
            for row in conn.execute(
                "SELECT user_id, last_seq FROM accounts WHERE app_id = %s", (APP,)
            ).fetchall()
        }
    names = list(tops)

    def history() -> None:
        user = names[rng.randrange(len(names))]
        top = tops[user]
        assert ledger.entries_between(APP, user, max(1, top - 49), top)

    def heavy_history() -> None:
        top = tops["heavy"] - rng.randrange(tops["heavy"] - 50)
        assert ledger.entries_between(APP, "heavy", top - 49, top)

    def find() -> None:
        assert ledger.find_entry(ids[rng.randrange(len(ids))]) is not None

    figures = {}
    for name, action in (("history", history), ("heavy_history", heavy_history), ("find", find)):
        took = sorted(_timed(action) for _ in range(reads))
        for percent in (50, 99):
            figures[f"{name}_p{percent}"] = took[min(len(took) - 1, len(took) * percent // 100)]
    return figures


def _timed(action: Callable[[], None]) -> float:
    """Milliseconds one call takes."""
    began = time.perf_counter()
    action()
    return (time.perf_counter() - began) * 1000


def _size(pool: ConnectionPool) -> str:
    with pool.connection() as conn:
        # A plain table is a tree of one leaf; pg_partition_tree has no rows for it.
        row = conn.execute(
            "SELECT sum(pg_table_size(r)), sum(pg_indexes_size(r)), count(*) FROM"
            " (SELECT relid AS r FROM pg_partition_tree('ledger_entries') WHERE isleaf"
            "  UNION SELECT 'ledger_entries'::regclass) t"
            " WHERE r <> 'ledger_entries'::regclass OR NOT EXISTS"
            "  (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'ledger_entries'::regclass)"
        ).fetchone()
    assert row is not None
    text = (
        f"{row[2]} table(s), data {int(row[0]) / 2**20:,.0f} MiB,"
        f" indexes {int(row[1]) / 2**20:,.0f} MiB"
    )
    if row[2] > 1:
        # What inserts keep hot: the indexes of the month being written.
        month = partition_name(datetime.now(UTC).date().replace(day=1))
        with pool.connection() as conn:
            hot = conn.execute("SELECT pg_indexes_size(to_regclass(%s))", (month,)).fetchone()
        assert hot is not None
        text += f", this month's indexes {int(hot[0]) / 2**20:,.0f} MiB"
    return text


def _count(pool: ConnectionPool) -> int:
    with pool.connection() as conn:
        row = conn.execute("SELECT count(*) FROM ledger_entries").fetchone()
    assert row is not None
    return int(row[0])


def _version(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


if __name__ == "__main__":
    main()
