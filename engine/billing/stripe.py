"""The few Stripe calls Tally makes, on an app's own Stripe account, with Stripe's errors mapped
onto Tally's. Every call that creates something carries an idempotency key, so the client's
own network retries can never create it twice."""

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import stripe

from engine.billing.defaults import STRIPE_TIMEOUT_SECONDS
from engine.errors import (
    NotFoundError,
    PaymentDeclinedError,
    PaymentProviderError,
    UnavailableError,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Card:
    """A stored payment method as end users see it (reauth's field names)."""

    id: str
    customer_id: str | None
    method_type: str
    card_brand: str | None
    card_last4: str | None
    card_exp_month: int | None
    card_exp_year: int | None
    provider: str = "stripe"


@dataclass(frozen=True, slots=True)
class Charge:
    payment_intent_id: str
    # succeeded, requires_action (the card wants its holder to authenticate), processing, ...
    status: str
    client_secret: str | None


@dataclass(frozen=True, slots=True)
class SetupIntent:
    id: str
    status: str
    customer_id: str | None
    payment_method_id: str | None
    client_secret: str | None


class StripeGateway:
    def __init__(self, secret_key: str, api_base: str) -> None:
        self._client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": api_base},
            max_network_retries=2,
            http_client=stripe.new_default_http_client(timeout=STRIPE_TIMEOUT_SECONDS),
        )

    def create_customer(self, app_id: str, user_id: str) -> str:
        with _errors():
            customer = self._client.v1.customers.create(
                params={"metadata": {"tally_app_id": app_id, "tally_user_id": user_id}},
                # Hashed: user ids may be longer than Stripe's 255-character keys.
                options={
                    "idempotency_key": "tally-customer:"
                    + hashlib.sha256(f"{app_id}:{user_id}".encode()).hexdigest()
                },
            )
        return str(customer.id)

    def create_setup_intent(self, customer_id: str, idempotency_key: str) -> SetupIntent:
        with _errors():
            intent = self._client.v1.setup_intents.create(
                params={"customer": customer_id, "usage": "off_session"},
                options={"idempotency_key": idempotency_key},
            )
        return _setup_intent(intent)

    def setup_intent(self, setup_intent_id: str) -> SetupIntent:
        with _errors():
            return _setup_intent(self._client.v1.setup_intents.retrieve(setup_intent_id))

    def cards(self, customer_id: str) -> list[Card]:
        with _errors():
            listed = self._client.v1.payment_methods.list(
                params={"customer": customer_id, "type": "card", "limit": 100}
            )
        return [_card(method) for method in listed.data]

    def card(self, payment_method_id: str) -> Card:
        with _errors():
            return _card(self._client.v1.payment_methods.retrieve(payment_method_id))

    def attach(self, payment_method_id: str, customer_id: str) -> Card:
        with _errors():
            method = self._client.v1.payment_methods.attach(
                payment_method_id, params={"customer": customer_id}
            )
        return _card(method)

    def detach(self, payment_method_id: str) -> None:
        with _errors():
            self._client.v1.payment_methods.detach(payment_method_id)

    def charge(
        self,
        customer_id: str,
        payment_method_id: str,
        amount_cents: int,
        currency: str,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> Charge:
        """Create and confirm an off-session PaymentIntent; raise PaymentDeclinedError on a
        decline. A card that needs its holder returns status requires_action, not an error."""
        try:
            with _errors():
                intent = self._client.v1.payment_intents.create(
                    params={
                        "amount": amount_cents,
                        "currency": currency,
                        "customer": customer_id,
                        "payment_method": payment_method_id,
                        "confirm": True,
                        "off_session": True,
                        "metadata": metadata,
                    },
                    options={"idempotency_key": idempotency_key},
                )
        except PaymentDeclinedError as exc:
            if exc.decline_code == "authentication_required" and exc.payment_intent_id:
                # Stripe answers an off-session charge that needs 3-D Secure with an error
                # carrying the PaymentIntent: the holder can still complete it on-session.
                return self.payment_intent(exc.payment_intent_id)
            raise
        return _charge(intent)

    def payment_intent(self, payment_intent_id: str) -> Charge:
        with _errors():
            return _charge(self._client.v1.payment_intents.retrieve(payment_intent_id))


@lru_cache(maxsize=256)
def gateway(secret_key: str, api_base: str) -> StripeGateway:
    """One client per Stripe account: it keeps its HTTP connections."""
    return StripeGateway(secret_key, api_base)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except stripe.CardError as exc:
        error = exc.error
        intent = getattr(error, "payment_intent", None) if error else None
        decline = (getattr(error, "decline_code", None) if error else None) or exc.code
        raise PaymentDeclinedError(
            exc.user_message or "the card was declined",
            decline_code=str(decline or "card_declined"),
            payment_intent_id=str(intent.id) if intent is not None else None,
        ) from None
    except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
        # The request may or may not have reached Stripe: retrying with the same idempotency
        # key is safe, which is what a 503 tells the caller.
        raise UnavailableError(
            f"Stripe is unavailable; retry shortly ({exc.user_message})"
        ) from exc
    except stripe.InvalidRequestError as exc:
        if exc.http_status == 404:
            raise NotFoundError(f"Stripe: {exc.user_message}") from None
        raise PaymentProviderError(f"Stripe refused the request: {exc.user_message}") from exc
    except stripe.AuthenticationError as exc:
        raise PaymentProviderError("Stripe refused the app's secret key") from exc
    except stripe.StripeError as exc:
        log.warning("Stripe error: %s", exc)
        raise PaymentProviderError(f"Stripe failed: {exc.user_message or exc}") from exc


def _card(method: Any) -> Card:
    card = getattr(method, "card", None)
    customer = getattr(method, "customer", None)
    return Card(
        id=str(method.id),
        customer_id=str(customer) if customer else None,
        method_type=str(method.type),
        card_brand=card.brand if card else None,
        card_last4=card.last4 if card else None,
        card_exp_month=card.exp_month if card else None,
        card_exp_year=card.exp_year if card else None,
    )


def _charge(intent: Any) -> Charge:
    return Charge(str(intent.id), str(intent.status), getattr(intent, "client_secret", None))


def _setup_intent(intent: Any) -> SetupIntent:
    customer = getattr(intent, "customer", None)
    method = getattr(intent, "payment_method", None)
    return SetupIntent(
        id=str(intent.id),
        status=str(intent.status),
        customer_id=str(customer) if customer else None,
        payment_method_id=str(method) if method else None,
        client_secret=getattr(intent, "client_secret", None),
    )
