"""Hold ids. A capture names only its hold, yet must reach the hold's account in one script
call: the id carries the user id (base64url), the app comes from the API key."""

import base64
import binascii
import secrets

from engine.errors import NotFoundError

_PREFIX = "hold_"


def new_hold_id(user_id: str) -> tuple[str, str]:
    """(hold_id, token): the token is the hold's field in its account's holds hash."""
    token = secrets.token_hex(12)
    return hold_id_of(token, user_id), token


def hold_id_of(token: str, user_id: str) -> str:
    user = base64.urlsafe_b64encode(user_id.encode()).rstrip(b"=").decode()
    return f"{_PREFIX}{token}_{user}"


def parse_hold_id(hold_id: str) -> tuple[str, str]:
    """(user_id, token) of a hold id; NotFoundError for anything that is not one."""
    prefix, _, rest = hold_id.partition("_")
    token, _, user = rest.partition("_")
    try:
        if prefix + "_" != _PREFIX or len(token) != 24 or not user:
            raise ValueError
        int(token, 16)
        user_id = base64.urlsafe_b64decode(user + "=" * (-len(user) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise NotFoundError(f"no hold {hold_id}") from None
    return user_id, token
