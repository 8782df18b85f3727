"""Signing outgoing webhooks per the Standard Webhooks specification: `whsec_` secrets, and
`v1,` + base64 HMAC-SHA256 of `id.timestamp.body` for each secret that signs."""

import base64
import hashlib
import hmac
import os

PREFIX = "whsec_"


def new_secret() -> str:
    return PREFIX + base64.b64encode(os.urandom(24)).decode()


def signature(secrets: list[str], message_id: str, timestamp: int, body: bytes) -> str:
    """The webhook-signature header: one `v1,<signature>` per secret, space-separated (two while
    a rotated secret still signs)."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(_key(s), signed, hashlib.sha256).digest()).decode()
        for s in secrets
    )


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(PREFIX))
