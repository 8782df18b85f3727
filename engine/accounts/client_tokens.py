"""Client tokens: what an app's backend hands a browser so it can act for one user.

A token is `tct_<payload>.<signature>`: the payload (app, user, expiry) in base64url JSON, signed
with HMAC-SHA256 under the app's `client_token_secret`. Nothing is stored per token, so checking
one costs no database round trip; rotating the secret revokes every token issued before.
"""

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from engine.errors import AuthenticationError, InvalidRequestError

PREFIX = "tct_"
DEFAULT_TTL_SECONDS = 3_600
MAX_TTL_SECONDS = 86_400


@dataclass(frozen=True, slots=True)
class ClientToken:
    app_id: str
    user_id: str
    expires_at: int  # epoch seconds


def new_secret() -> str:
    return secrets.token_hex(32)


def mint(app_id: str, secret: str, user_id: str, ttl_seconds: int, now: float | None = None) -> str:
    if not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
        raise InvalidRequestError(f"ttl_seconds must be an integer from 1 to {MAX_TTL_SECONDS}")
    issued = int(time.time() if now is None else now)
    payload = json.dumps(
        {"app": app_id, "sub": user_id, "iat": issued, "exp": issued + ttl_seconds},
        separators=(",", ":"),
    ).encode()
    signed = PREFIX + _b64(payload)
    return f"{signed}.{_b64(_sign(secret, signed))}"


def read_unverified(token: str) -> ClientToken:
    """The token's claims, not yet trusted: the app id says whose secret checks the signature."""
    try:
        body, _, _ = token.removeprefix(PREFIX).partition(".")
        claims = json.loads(_unb64(body))
        parsed = ClientToken(str(claims["app"]), str(claims["sub"]), int(claims["exp"]))
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise AuthenticationError("malformed client token") from None
    return parsed


def verify(token: str, secret: str, now: float | None = None) -> ClientToken:
    claims = read_unverified(token)
    signed, _, signature = token.rpartition(".")
    try:
        given = _unb64(signature)
    except (ValueError, binascii.Error):
        raise AuthenticationError("malformed client token") from None
    if not hmac.compare_digest(given, _sign(secret, signed)):
        raise AuthenticationError("invalid client token (revoked, or not issued by this app)")
    if claims.expires_at <= (time.time() if now is None else now):
        raise AuthenticationError("client token expired: ask the app's backend for a new one")
    return claims


def _sign(secret: str, signed: str) -> bytes:
    return hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
