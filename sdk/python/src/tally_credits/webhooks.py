"""Verifying the webhooks Tally sends, as the Standard Webhooks specification signs them.

Tally signs `{webhook-id}.{webhook-timestamp}.{body}` with HMAC-SHA256 under the endpoint's
secret (`whsec_` + base64 of the key) and sends `webhook-signature: v1,<base64> ...`. While a
secret is being rotated both the old and the new one sign, so any one matching signature
verifies the message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .errors import WebhookVerificationError

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300


@dataclass(frozen=True)
class WebhookEvent:
    """A verified event. `id` is the `webhook-id` header: the same on every retry of one event,
    so receivers that must act once deduplicate on it. `timestamp` is the body's, when the event
    happened (ISO 8601, as sent); `raw` is the whole body, parsed."""

    id: str
    type: str
    timestamp: str
    data: Mapping[str, Any]
    raw: Mapping[str, Any]


def verify_webhook(
    payload: bytes | str,
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: datetime | float | None = None,
) -> WebhookEvent:
    """Check that `payload` came from Tally and is recent; return the event it carries.

    `payload` must be the request body exactly as received (JSON parsed and serialized again
    is not the same bytes and will not verify). `headers` is any mapping; names are matched
    whatever their case. `tolerance` is how many seconds `webhook-timestamp` may be from `now`
    (an aware datetime or unix seconds; default the current time), either way: an old message
    could be a captured one replayed.

    Raises `WebhookVerificationError` when a header is missing or malformed, the timestamp is
    outside the tolerance, no signature matches, the secret is malformed or the body is not a
    Tally event.
    """
    key = _secret_key(secret)
    body = _raw_body(payload)
    lowered = {name.lower(): value for name, value in headers.items()}
    message_id = lowered.get("webhook-id")
    sent_at = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (message_id and sent_at and signatures):
        raise WebhookVerificationError(
            "missing webhook-id, webhook-timestamp or webhook-signature header"
        )
    _check_timestamp(sent_at, tolerance, now)
    # The header's own text is what was signed: no reformatting of the timestamp.
    signed = f"{message_id}.{sent_at}.".encode() + body
    expected = hmac.new(key, signed, hashlib.sha256).digest()
    if not any(hmac.compare_digest(expected, given) for given in _v1_signatures(signatures)):
        raise WebhookVerificationError("no matching signature in webhook-signature")
    return _event(message_id, body)


def _raw_body(payload: bytes | str) -> bytes:
    if isinstance(payload, str):
        return payload.encode()
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    # A dict here means a framework parsed the body first: its bytes are gone.
    raise TypeError(f"payload must be the raw body, bytes or str, not {type(payload).__name__}")


def _secret_key(secret: str) -> bytes:
    if not isinstance(secret, str):  # None: an unset environment variable, most likely
        raise TypeError("secret must be the endpoint's whsec_... string")
    # Padding is optional (the reference libraries accept secrets without it): re-pad.
    encoded = secret.strip().removeprefix(SECRET_PREFIX).rstrip("=")
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError(
            "the webhook secret is not whsec_ followed by base64"
        ) from None
    if not key:
        raise WebhookVerificationError("the webhook secret is empty")
    return key


def _check_timestamp(header: str, tolerance: int, now: datetime | float | None) -> None:
    if not (header.isascii() and header.isdigit()):
        raise WebhookVerificationError("webhook-timestamp is not unix seconds")
    if now is None:
        now = time.time()
    age = (now.timestamp() if isinstance(now, datetime) else now) - int(header)
    if age > tolerance:
        raise WebhookVerificationError("webhook-timestamp is too old")
    if age < -tolerance:
        raise WebhookVerificationError("webhook-timestamp is too new")


def _v1_signatures(header: str) -> list[bytes]:
    """The v1 signatures the header lists. Other versions (v1a is asymmetric) and entries that
    are not base64 are skipped, not refused: one unusable entry must not hide a valid one."""
    found = []
    for entry in header.split():
        version, _, signature = entry.partition(",")
        if version != "v1":
            continue
        try:
            found.append(base64.b64decode(signature, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


def _event(message_id: str, body: bytes) -> WebhookEvent:
    try:
        parsed = json.loads(body)
    except ValueError:  # UnicodeDecodeError included
        raise WebhookVerificationError("the webhook body is not JSON") from None
    if not isinstance(parsed, dict):
        raise WebhookVerificationError("the webhook body is not a JSON object")
    kind, timestamp, data = parsed.get("type"), parsed.get("timestamp"), parsed.get("data")
    if not (isinstance(kind, str) and isinstance(timestamp, str) and isinstance(data, dict)):
        raise WebhookVerificationError("the webhook body lacks its type, timestamp or data")
    return WebhookEvent(id=message_id, type=kind, timestamp=timestamp, data=data, raw=parsed)
