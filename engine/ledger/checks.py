"""The input rules of an entry's fields, shared by every operation that writes one."""

import json
from typing import Any

from engine.errors import InvalidRequestError
from engine.models import MAX_AMOUNT, text_problem


def check_amount(amount: int) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int) or not 1 <= amount <= MAX_AMOUNT:
        raise InvalidRequestError(f"amount must be an integer from 1 to {MAX_AMOUNT}")


def check_text(name: str, value: str | None, max_length: int, *, required: bool = False) -> None:
    if value is None and not required:
        return
    if required and isinstance(value, str):
        problem = text_problem(name, value, max_length)
        if problem:
            raise InvalidRequestError(problem)
    if not isinstance(value, str) or not (1 if required else 0) <= len(value) <= max_length:
        qualifier = "a non-empty string" if required else "a string"
        raise InvalidRequestError(f"{name} must be {qualifier} of at most {max_length} characters")
    if "\x00" in value:
        # PostgreSQL text cannot hold NUL; an entry it refuses would block its outbox shard.
        raise InvalidRequestError(f"{name} must not contain NUL characters")


def metadata_json(metadata: dict[str, Any] | None) -> str:
    if metadata is None:
        return "null"
    if not isinstance(metadata, dict):
        raise InvalidRequestError("metadata must be a JSON object")
    try:
        encoded = json.dumps(
            metadata, allow_nan=False, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidRequestError(f"metadata must be plain JSON: {exc}") from exc
    if "\\u0000" in encoded:
        raise InvalidRequestError("metadata must not contain NUL characters")
    return encoded
