"""Dashboard operators against a real PostgreSQL: the CLI, passwords, sign-in and its limit."""

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from engine.errors import AuthenticationError, InvalidRequestError, TooManyRequestsError
from engine.operators.passwords import hash_password, verify_password
from engine.operators.repository import OperatorRepository
from engine.operators.service import MAX_FAILURES, Operators
from engine.settings import Settings
from engine.store.db import open_pool
from tests.conftest import tally, tally_env


@pytest.fixture
def operators(settings: Settings) -> Iterator[Operators]:
    pool = open_pool(settings.database_url, 2, wait=True)
    yield Operators(OperatorRepository(pool))
    pool.close()


def _email() -> str:
    return f"op-{uuid.uuid4().hex[:10]}@example.com"


def _cli_with_password(settings: Settings, password: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", *args, "--password-stdin"],
        input=password + "\n", env=tally_env(settings), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_passwords_are_scrypt_hashes_that_verify_only_the_password() -> None:
    stored = hash_password("correct horse battery staple")
    assert stored.startswith("scrypt$15$8$1$")
    assert "correct horse" not in stored
    assert verify_password("correct horse battery staple", stored)
    assert not verify_password("correct horse battery stapler", stored)
    assert hash_password("correct horse battery staple") != stored  # salted


def test_cli_creates_lists_resets_and_disables_operators(
    settings: Settings, operators: Operators
) -> None:
    email = _email()
    out = _cli_with_password(
        settings, "first password 1", "operators", "create", email.upper(), "--role", "viewer"
    )
    assert f"operator {email} (viewer) created" in out
    assert "first password 1" not in out
    listed = tally(settings, "operators", "list").stdout
    assert email in listed and "viewer" in listed
    assert operators.sign_in(email, "first password 1").session.role == "viewer"

    first = operators.sign_in(email, "first password 1")
    _cli_with_password(settings, "second password 2", "operators", "reset-password", email)
    assert operators.session(first.token) is None  # a new password signs out everywhere
    with pytest.raises(AuthenticationError):
        operators.sign_in(email, "first password 1")
    second = operators.sign_in(email, "second password 2")

    assert "disabled" in tally(settings, "operators", "disable", email).stdout
    assert operators.session(second.token) is None
    with pytest.raises(AuthenticationError):
        operators.sign_in(email, "second password 2")
    again = tally(settings, "operators", "create", email, check=False)
    assert again.returncode == 1 and "exists already" in again.stderr


def test_cli_generates_a_password_when_none_comes_on_stdin(
    settings: Settings, operators: Operators
) -> None:
    email = _email()
    view = json.loads(tally(settings, "operators", "create", email, "--json").stdout)
    assert view["role"] == "admin" and len(view["password"]) >= 20
    assert operators.sign_in(email, view["password"]).session.email == email


def test_bad_input_is_refused_with_a_reason(operators: Operators) -> None:
    with pytest.raises(InvalidRequestError, match="12 to 1024 characters"):
        operators.create(_email(), "short")
    with pytest.raises(InvalidRequestError, match="not an email address"):
        operators.create("not-an-email", "long enough password")
    with pytest.raises(InvalidRequestError, match="role must be one of admin, viewer"):
        operators.create(_email(), "long enough password", "owner")


def test_five_failures_lock_the_email_even_for_the_right_password(operators: Operators) -> None:
    email = _email()
    operators.create(email, "the right password")
    other = _email()
    operators.create(other, "the right password")
    for _ in range(MAX_FAILURES):
        with pytest.raises(AuthenticationError, match="wrong email or password"):
            operators.sign_in(email, "a wrong password")
    with pytest.raises(TooManyRequestsError) as locked:
        operators.sign_in(email, "the right password")
    assert 800 < locked.value.retry_after <= 900
    # Another email is not locked; an unknown one fails like a wrong password.
    assert operators.sign_in(other, "the right password").session.email == other
    with pytest.raises(AuthenticationError, match="wrong email or password"):
        operators.sign_in(_email(), "the right password")


def test_sessions_end_on_sign_out(operators: Operators) -> None:
    email = _email()
    operators.create(email, "the right password")
    one = operators.sign_in(email, "the right password")
    two = operators.sign_in(email, "the right password")
    assert one.session.csrf_token != two.session.csrf_token
    operators.sign_out(one.token)
    assert operators.session(one.token) is None
    assert operators.session(two.token) is not None
    assert operators.session("") is None
