"""Secrets Tally must read back, sealed with AES-256-GCM under `TALLY_SECRET_KEY`.

A sealed value is `sealed:v1:<key id>:<base64url(nonce + ciphertext)>`. The key id names the
key that sealed it, so a rotation knows what is left to move; the associated data binds it to
one app and one field, so a value copied to another app or column does not open.
"""

import base64
import binascii
import hashlib
import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr

from engine.errors import SecretKeyError
from engine.settings import Settings

_PREFIX = "sealed:"
_SEALED = re.compile(r"sealed:v1:([0-9a-f]{16}):([A-Za-z0-9_-]{38,})")
_NONCE_BYTES = 12
_STANDARD = str.maketrans("-_", "+/")
KEY_HELP = "32 random bytes in base64 (`tally secrets generate-key` makes one)"


def generate_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def parse_key(text: str, variable: str) -> bytes:
    try:
        # Either base64 alphabet: what `openssl rand -base64 32` and Python's urlsafe print.
        key = base64.b64decode(text.strip().translate(_STANDARD), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise SecretKeyError(f"{variable} must be {KEY_HELP}")
    return key


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"tally secret key id\0" + key).hexdigest()[:16]


def sealed_with(value: str) -> str | None:
    """The id of the key that sealed `value`; None for a plain value, stored before sealing."""
    if not value.startswith(_PREFIX):
        return None
    match = _SEALED.fullmatch(value)
    if match is None:
        raise SecretKeyError("a stored secret is damaged: set it again with `tally apps update`")
    return match.group(1)


def keyring(settings: Settings) -> "Keyring":
    """The keys the settings name, each given directly or as a file (TALLY_SECRET_KEY_FILE)."""

    def read(variable: str, value: SecretStr | None, path: str | None) -> bytes | None:
        if value is not None and path:
            raise SecretKeyError(f"set {variable} or {variable}_FILE, not both")
        if path:
            try:
                return parse_key(Path(path).read_text(), f"{variable}_FILE ({path})")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not base64 text"
                raise SecretKeyError(f"{variable}_FILE: cannot read {path}: {reason}") from None
        return parse_key(value.get_secret_value(), variable) if value is not None else None

    return Keyring(
        read("TALLY_SECRET_KEY", settings.secret_key, settings.secret_key_file),
        read(
            "TALLY_SECRET_KEY_PREVIOUS",
            settings.secret_key_previous,
            settings.secret_key_previous_file,
        ),
    )


class Keyring:
    """The current key, which seals, and during a rotation the previous one, which still opens."""

    def __init__(self, current: bytes | None, previous: bytes | None = None) -> None:
        self._keys = {key_id(k): AESGCM(k) for k in (previous, current) if k is not None}
        self.current_id = key_id(current) if current is not None else None

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def seal(self, value: str, owner: str, field: str) -> str:
        if self.current_id is None:
            raise SecretKeyError(
                f"TALLY_SECRET_KEY is not set: Tally stores {field} encrypted and needs a key,"
                f" {KEY_HELP}"
            )
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._keys[self.current_id].encrypt(nonce, value.encode(), _bound(owner, field))
        payload = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{_PREFIX}v1:{self.current_id}:{payload}"

    def open(self, stored: str, owner: str, field: str) -> str:
        kid = sealed_with(stored)
        if kid is None:
            # Only `tally migrate` reads plain values, to seal them: a plain value written
            # into the table by hand is not trusted.
            raise SecretKeyError(
                f"the {field} of {owner} is stored in plain text: run `tally migrate`"
                " with TALLY_SECRET_KEY set to encrypt it"
            )
        cipher = self._keys.get(kid)
        if cipher is None:
            raise SecretKeyError(self.missing(kid))
        payload = stored.rsplit(":", 1)[1]
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        try:
            plain = cipher.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _bound(owner, field))
        except (InvalidTag, ValueError, binascii.Error):
            raise SecretKeyError(
                f"the stored {field} of {owner} does not open: it was altered or moved"
            ) from None
        return plain.decode()

    def missing(self, kid: str) -> str:
        if not self._keys:
            return f"secrets are stored encrypted, and TALLY_SECRET_KEY is not set: {KEY_HELP}"
        return (
            f"secrets are stored under key {kid}, which is neither TALLY_SECRET_KEY nor"
            " TALLY_SECRET_KEY_PREVIOUS"
        )


def _bound(owner: str, field: str) -> bytes:
    return f"{owner}\0{field}".encode()
