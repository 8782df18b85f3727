"""Operators of the dashboard: who they are, how they sign in, and their sessions."""

import hashlib
import math
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from engine.errors import (
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    TooManyRequestsError,
)
from engine.operators.passwords import decoy, hash_password, password_problem, verify_password
from engine.operators.repository import Operator, OperatorRepository, Session

ROLES = ("admin", "viewer")
# Five wrong passwords for one email within 15 minutes lock it until the window has passed.
MAX_FAILURES = 5
FAILURE_WINDOW_SECONDS = 15 * 60
SESSION_SECONDS = 12 * 3600
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
WRONG_CREDENTIALS = "wrong email or password"


@dataclass(frozen=True, slots=True)
class NewSession:
    """`token` goes into the operator's cookie; only its hash is stored."""

    token: str
    session: Session


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Operators:
    def __init__(self, repository: OperatorRepository) -> None:
        self._repository = repository

    def create(self, email: str, password: str, role: str = "admin") -> Operator:
        email = _email(email)
        if role not in ROLES:
            raise InvalidRequestError(f"role must be one of {', '.join(ROLES)}")
        _check_password(password)
        operator = self._repository.create(email, hash_password(password), role)
        if operator is None:
            raise ConflictError(f"operator {email} exists already")
        return operator

    def list(self) -> list[Operator]:
        return self._repository.list()

    def disable(self, email: str) -> Operator:
        return _found(self._repository.update(_email(email), disable=True), email)

    def reset_password(self, email: str, password: str) -> Operator:
        _check_password(password)
        operator = self._repository.update(_email(email), password_hash=hash_password(password))
        return _found(operator, email)

    def sign_in(self, email: str, password: str) -> NewSession:
        """A new session; the same error whether the email or the password was wrong."""
        email = email.strip().lower()
        failures, oldest = self._repository.recent_failures(email, FAILURE_WINDOW_SECONDS)
        if failures >= MAX_FAILURES and oldest is not None:
            wait = oldest + timedelta(seconds=FAILURE_WINDOW_SECONDS) - datetime.now(UTC)
            minutes = max(1, math.ceil(wait.total_seconds() / 60))
            raise TooManyRequestsError(
                f"too many failed sign-ins for this email: try again in {minutes} minutes",
                max(1, math.ceil(wait.total_seconds())),
            )
        stored = self._repository.password_hash(email)
        if not verify_password(password, stored or decoy()) or stored is None:
            self._repository.record_failure(email, FAILURE_WINDOW_SECONDS)
            raise AuthenticationError(WRONG_CREDENTIALS)
        self._repository.clear_failures(email)
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        self._repository.create_session(token_hash(token), email, csrf, SESSION_SECONDS)
        session = self._repository.session(token_hash(token))
        if session is None:  # disabled between the two statements
            raise AuthenticationError(WRONG_CREDENTIALS)
        return NewSession(token, session)

    def session(self, token: str) -> Session | None:
        return self._repository.session(token_hash(token)) if token else None

    def sign_out(self, token: str) -> None:
        self._repository.delete_session(token_hash(token))


def _email(email: str) -> str:
    email = email.strip().lower()
    if not _EMAIL.fullmatch(email) or len(email) > 254:
        raise InvalidRequestError(f"{email!r} is not an email address")
    return email


def _check_password(password: str) -> None:
    problem = password_problem(password)
    if problem:
        raise InvalidRequestError(problem)


def _found(operator: Operator | None, email: str) -> Operator:
    if operator is None:
        raise NotFoundError(f"no operator {email}")
    return operator
