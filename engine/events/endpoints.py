"""Webhook endpoints: where an app's events go, which ones, and the secrets that sign them."""

import ipaddress
import secrets
from typing import Any
from urllib.parse import urlsplit

from engine.errors import InvalidRequestError, NotFoundError
from engine.events.repository import Endpoint, EventRepository
from engine.events.signing import new_secret
from engine.events.types import EVENT_TYPES

MAX_ENDPOINTS = 20
MAX_URL = 2_000
# After a rotation the previous secret signs too for this long: receivers switch meanwhile.
OVERLAP_SECONDS = 86_400
ALL = "*"


def check_url(url: Any) -> str:
    """https, or http to this machine (a receiver under development)."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise InvalidRequestError(f"url must be a URL of at most {MAX_URL} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InvalidRequestError("url must be an https:// URL")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise InvalidRequestError("url must use https (http is allowed for loopback only)")
    return url


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_events(events: Any) -> list[str]:
    """The subscribed types; [] (stored) for every type, given as None or ["*"]."""
    if events is None or events == [ALL]:
        return []
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise InvalidRequestError('events must be a list of event types, or ["*"] for all')
    unknown = sorted(set(events) - set(EVENT_TYPES))
    if unknown:
        raise InvalidRequestError(
            f"unknown event types {', '.join(unknown)}: expected any of {', '.join(EVENT_TYPES)}"
        )
    return sorted(set(events), key=EVENT_TYPES.index)


class Endpoints:
    def __init__(self, repository: EventRepository) -> None:
        self._repository = repository

    def create(self, app_id: str, url: Any, events: Any = None) -> Endpoint:
        url, wanted = check_url(url), check_events(events)
        if len(self._repository.endpoints(app_id)) >= MAX_ENDPOINTS:
            raise InvalidRequestError(f"an app has at most {MAX_ENDPOINTS} webhook endpoints")
        endpoint_id = f"we_{secrets.token_hex(8)}"
        return self._repository.create_endpoint(endpoint_id, app_id, url, wanted, new_secret())

    def of_app(self, app_id: str) -> list[Endpoint]:
        return self._repository.endpoints(app_id)

    def get(self, endpoint_id: str, app_id: str | None = None) -> Endpoint:
        """The endpoint; `app_id` None is the operator's view, of every app's."""
        endpoint = self._repository.endpoint(endpoint_id)
        if endpoint is None or (app_id is not None and endpoint.app_id != app_id):
            raise NotFoundError(f"no webhook endpoint {endpoint_id}")
        return endpoint

    def update(
        self, endpoint_id: str, changes: dict[str, Any], app_id: str | None = None
    ) -> Endpoint:
        self.get(endpoint_id, app_id)
        checked: dict[str, Any] = {}
        if "url" in changes:
            checked["url"] = check_url(changes["url"])
        if "events" in changes:
            checked["events"] = check_events(changes["events"])
        if not checked:
            raise InvalidRequestError("nothing to update: pass url and/or events")
        updated = self._repository.update_endpoint(endpoint_id, checked)
        if updated is None:
            raise NotFoundError(f"no webhook endpoint {endpoint_id}")
        return updated

    def rotate_secret(self, endpoint_id: str, app_id: str | None = None) -> Endpoint:
        self.get(endpoint_id, app_id)
        endpoint = self._repository.rotate_secret(endpoint_id, new_secret(), OVERLAP_SECONDS)
        if endpoint is None:
            raise NotFoundError(f"no webhook endpoint {endpoint_id}")
        return endpoint

    def delete(self, endpoint_id: str, app_id: str | None = None) -> Endpoint:
        endpoint = self.get(endpoint_id, app_id)
        if not self._repository.delete_endpoint(endpoint_id):
            raise NotFoundError(f"no webhook endpoint {endpoint_id}")
        return endpoint
