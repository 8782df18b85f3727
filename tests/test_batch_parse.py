"""The batch body's fast checks (api.batch) against the pydantic model they stand in for: the
same operations for every valid body, the same error message, byte for byte, for every
invalid one."""

import json
import random
from typing import Any

import orjson
import pytest

from api.batch import _plain_operations, model_operations, parse_operations
from engine.errors import InvalidRequestError
from engine.models import (
    MAX_AMOUNT,
    MAX_DESCRIPTION,
    MAX_IDEMPOTENCY_KEY,
    MAX_REFERENCE_ID,
    MAX_USER_ID,
    Operation,
)

Outcome = list[Operation] | str


def _outcome(parse: Any, body: bytes) -> Outcome:
    try:
        operations: list[Operation] = parse(body)
    except InvalidRequestError as exc:
        return exc.message
    return operations


# Values each field is tried with: valid ones, and each way of being wrong near the rules.
_VALUES: dict[str, list[Any]] = {
    "type": ["add", "deduct", "refund", "", "ADD", 1, None, True, ["add"]],
    "user_id": [
        "u",
        "bob",
        "x" * MAX_USER_ID,
        "x" * (MAX_USER_ID + 1),
        "",
        " bob",
        "bob ",
        "b\tb",
        "b\x00b",
        "é😀",
        "\u2028",
        7,
        None,
        False,
        {"a": 1},
        "type",
        '"amount"',
        'a"b',
        "\\",
    ],
    "amount": [
        1,
        5,
        MAX_AMOUNT,
        MAX_AMOUNT + 1,
        0,
        -1,
        1.0,
        1.5,
        "5",
        True,
        None,
        2**64,
        [1],
    ],
    "description": [
        None,
        "",
        "coffee",
        "d" * MAX_DESCRIPTION,
        "d" * (MAX_DESCRIPTION + 1),
        3,
        "line\nbreak",
        'say "hi"',
        "user_id",
        "\x00",
    ],
    "reference_id": [None, "r-1", "r" * MAX_REFERENCE_ID, "r" * (MAX_REFERENCE_ID + 1), 1.0],
    "idempotency_key": [
        None,
        "k",
        "k" * MAX_IDEMPOTENCY_KEY,
        "k" * (MAX_IDEMPOTENCY_KEY + 1),
        "",
        12,
        "k é",
    ],
    "metadata": [None, {}, {"a": [1, 2]}, [], "x", {"deep": {"er": None}}],
    "expires_at": [None, "2099-01-01T00:00:00Z", "2099-01-01T00:00:00", "soon", 5, ""],
    "colour": ["red", None],
}
_REQUIRED = ("type", "user_id", "amount")


def _operation(rng: random.Random) -> dict[str, Any]:
    op = {"type": rng.choice(["add", "deduct"]), "user_id": f"u{rng.randrange(50)}"}
    op["amount"] = rng.choice([1, 2, 10, 1000])
    for field in ("description", "reference_id", "idempotency_key"):
        if rng.random() < 0.3:
            op[field] = rng.choice([v for v in _VALUES[field] if isinstance(v, str)][:3])
    return op


def _mutated(rng: random.Random, op: dict[str, Any]) -> dict[str, Any]:
    op = dict(op)
    field = rng.choice(list(_VALUES))
    if field in _REQUIRED and rng.random() < 0.2:
        del op[field]
    else:
        op[field] = rng.choice(_VALUES[field])
    return op


def _text(value: Any, rng: random.Random) -> bytes:
    """JSON text of `value`, spelled in one of the ways JSON allows."""
    indent = rng.choice([None, None, None, 2])
    separators = rng.choice([(",", ":"), (", ", ": ")])
    ascii_only = rng.random() < 0.2  # non-ASCII as \u escapes
    return json.dumps(value, indent=indent, separators=separators, ensure_ascii=ascii_only).encode()


def _bodies(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    bodies = []
    for _ in range(count):
        ops = [_operation(rng) for _ in range(rng.choice([1, 2, 5, 30]))]
        roll = rng.random()
        if roll < 0.35:
            pass  # valid
        elif roll < 0.75:
            for _ in range(rng.choice([1, 1, 2])):
                at = rng.randrange(len(ops))
                ops[at] = _mutated(rng, ops[at])
        body = _text({"operations": ops}, rng)
        if 0.75 <= roll < 0.8:
            body = body[: rng.randrange(len(body))]  # cut short
        elif 0.8 <= roll < 0.85:  # a key twice, in the text only
            body = body.replace(b'"amount":', b'"amount":3,"amount":', 1)
        elif 0.85 <= roll < 0.88:  # a key spelled with an escape, maybe twice
            body = body.replace(b'"type"', b'"typ\\u0065"', rng.choice([1, 2]))
        elif 0.88 <= roll < 0.9:
            body = body.replace(b'"type":', b'"type":"add","typ\\u0065":', 1)
        elif 0.9 <= roll < 0.92:
            body = body[:-1] + b',"operations":[]}'
        elif 0.92 <= roll < 0.94:
            body = body[:-1] + b',"extra":1}'
        elif 0.94 <= roll < 0.96:
            body = rng.choice(
                [b"", b"[]", b"null", b"{}", b'{"operations":{}}', b"\xef\xbb\xbf" + body]
            )
        elif 0.96 <= roll < 0.98:
            body = body.replace(b"1", b"NaN", 1).replace(b'"u', b'"\\ud800', 1)
        elif roll >= 0.98:
            body = body.replace(b"u", b"\xff", 1)
        bodies.append(body)
    return bodies


@pytest.mark.parametrize("seed", range(4))
def test_fast_checks_agree_with_the_model(seed: int) -> None:
    fast = 0
    for body in _bodies(seed, 1500):
        expected = _outcome(model_operations, body)
        assert _outcome(parse_operations, body) == expected, body[:300]
        plain = _plain_operations(body)
        if plain is not None:
            fast += 1
            assert plain == expected, body[:300]
    assert fast > 250  # most valid bodies (a third of them all) took the fast path


@pytest.mark.parametrize(
    "operations",
    [
        [{"type": "add", "user_id": "u", "amount": 1}] * 1000,
        [{"type": "add", "user_id": "u", "amount": 1}] * 1001,
        [],
        [{"type": "deduct", "user_id": "u", "amount": 1, "expires_at": "2099-01-01T00:00:00Z"}],
        [{"type": "add", "user_id": "u", "amount": 1, "metadata": {"a": 1}}],
    ],
)
def test_sizes_and_the_fields_left_to_the_model(operations: list[dict[str, Any]]) -> None:
    body = orjson.dumps({"operations": operations})
    assert _outcome(parse_operations, body) == _outcome(model_operations, body)


def test_the_bench_batch_takes_the_fast_path() -> None:
    ops = [{"type": "deduct", "user_id": f"u{i}", "amount": 1} for i in range(1000)]
    assert _plain_operations(orjson.dumps({"operations": ops})) is not None
