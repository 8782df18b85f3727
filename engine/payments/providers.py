"""Payment provider webhooks: verify each provider's signature and read what a payment means.

Every function here is pure: bytes and headers in, a `PaymentEvent` (or an error) out. Storing
and applying events is engine.payments.service' job.
"""

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import stripe

from engine.errors import InvalidRequestError
from engine.models import MAX_AMOUNT, MAX_USER_ID
from engine.payments.defaults import TOLERANCE_SECONDS

PROVIDERS = ("stripe", "polar", "lemonsqueezy")
# The events to select in each provider's webhook settings: the ones parse() acts on.
EVENTS = {
    "stripe": ("checkout.session.completed", "payment_intent.succeeded", "charge.refunded"),
    "polar": ("order.paid", "order.refunded"),
    "lemonsqueezy": ("order_created", "order_refunded"),
}

# Currencies whose amounts have no minor unit, or three decimals (Stripe's lists).
_ZERO_DECIMAL = frozenset(
    [
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    ]
)
_THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])


def webhook_urls(app_id: str, public_url: str = "") -> dict[str, str]:
    """Where each provider posts this app's events: a full URL when a public URL is configured."""
    base = public_url.rstrip("/")
    return {provider: f"{base}/webhooks/{provider}/{app_id}" for provider in PROVIDERS}


class SignatureError(InvalidRequestError):
    """The request was not signed by the provider with this app's secret."""


@dataclass(frozen=True, slots=True)
class PaymentEvent:
    event_id: str
    event_type: str
    # credit: a paid payment; take_back: a (partial) refund of one; ignore: nothing to do.
    action: str
    payment_id: str | None = None
    user_id: str | None = None
    credits: int | None = None  # what tally_credits asked for, when it did
    amount_minor: int | None = None  # what was paid, in the currency's minor unit
    currency: str | None = None
    refunded_minor: int | None = None  # for take_back: refunded so far, in total
    app_id: str | None = None  # tally_app_id: the app the payment was made for, when it says
    reason: str | None = None  # why it is ignored
    # Why a payment for one of the app's users cannot be credited as sent: it needs a look.
    problem: str | None = None

    @property
    def idempotency_key(self) -> str:
        return f"{self.action}:{self.payment_id}"


def verify(provider: str, secret: str, headers: dict[str, str], body: bytes) -> None:
    """Raise SignatureError unless `body` is signed with `secret` as `provider` signs."""
    if provider == "stripe":
        try:
            stripe.Webhook.construct_event(
                body, headers.get("stripe-signature"), secret, tolerance=TOLERANCE_SECONDS
            )
        except stripe.SignatureVerificationError as exc:
            raise SignatureError(f"invalid Stripe-Signature: {exc.user_message or exc}") from None
        except ValueError:
            raise SignatureError("body is not JSON") from None
    elif provider == "polar":
        _verify_standard_webhook(secret, headers, body)
    elif provider == "lemonsqueezy":
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, headers.get("x-signature", "")):
            raise SignatureError("invalid X-Signature")
    else:
        raise InvalidRequestError(f"unknown provider {provider}")


def _verify_standard_webhook(secret: str, headers: dict[str, str], body: bytes) -> None:
    """Standard Webhooks, as Polar's SDK verifies them: the HMAC key is the secret's own bytes."""
    message_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (message_id and timestamp and signatures):
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise SignatureError("invalid webhook-timestamp") from None
    if abs(time.time() - sent_at) > TOLERANCE_SECONDS:
        raise SignatureError("webhook-timestamp is more than 5 minutes away from now")
    signed = f"{message_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest())
    for candidate in signatures.split():
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(expected, signature.encode()):
            return
    raise SignatureError("invalid webhook-signature")


def parse(provider: str, headers: dict[str, str], body: bytes) -> PaymentEvent:
    try:
        payload = json.loads(body)
    except ValueError:
        raise InvalidRequestError("body is not JSON") from None
    if not isinstance(payload, dict):
        raise InvalidRequestError("body is not a JSON object")
    if provider == "stripe":
        return _stripe(payload)
    if provider == "polar":
        return _polar(headers.get("webhook-id", ""), payload)
    return _lemonsqueezy(body, payload)


def _stripe(event: dict[str, Any]) -> PaymentEvent:
    event_id, event_type = str(event.get("id", "")), str(event.get("type", ""))
    obj = _object(_object(event.get("data")).get("object"))
    if event_type == "payment_intent.succeeded":
        return _credit(
            event_id, event_type, obj.get("id"), obj.get("metadata"),
            obj.get("amount_received") or obj.get("amount"), obj.get("currency"),
        )  # fmt: skip
    if event_type == "checkout.session.completed":
        if obj.get("payment_status") != "paid":
            return _ignore(
                event_id, event_type, f"session is {obj.get('payment_status')}, not paid"
            )
        # The PaymentIntent id, so its own payment_intent.succeeded credits the same payment.
        payment_id = obj.get("payment_intent") or obj.get("id")
        return _credit(
            event_id, event_type, payment_id, obj.get("metadata"),
            obj.get("amount_total"), obj.get("currency"),
        )  # fmt: skip
    if event_type == "charge.refunded":
        return _take_back(
            event_id, event_type, obj.get("payment_intent") or obj.get("id"),
            obj.get("amount"), obj.get("amount_refunded"),
        )  # fmt: skip
    return _ignore(event_id, event_type, f"event type {event_type} is not used")


def _polar(message_id: str, event: dict[str, Any]) -> PaymentEvent:
    event_type = str(event.get("type", ""))
    order = _object(event.get("data"))
    total = order.get("total_amount", order.get("amount"))
    if event_type == "order.paid":
        return _credit(
            message_id, event_type, order.get("id"), order.get("metadata"), total,
            order.get("currency"),
        )  # fmt: skip
    if event_type == "order.refunded":
        refunded = order.get("refunded_amount") or total
        return _take_back(message_id, event_type, order.get("id"), total, refunded)
    return _ignore(message_id, event_type, f"event type {event_type} is not used")


def _lemonsqueezy(body: bytes, event: dict[str, Any]) -> PaymentEvent:
    meta = _object(event.get("meta"))
    event_type = str(meta.get("event_name", ""))
    order = _object(event.get("data"))
    attributes = _object(order.get("attributes"))
    order_id = order.get("id")
    # Lemon Squeezy sends no delivery id: the same body delivered again is the same event.
    event_id = f"{event_type}:{order_id}:{hashlib.sha256(body).hexdigest()[:16]}"
    if event_type == "order_created":
        if attributes.get("status") != "paid":
            return _ignore(event_id, event_type, f"order is {attributes.get('status')}, not paid")
        return _credit(
            event_id, event_type, order_id, meta.get("custom_data"), attributes.get("total"),
            attributes.get("currency"),
        )  # fmt: skip
    if event_type == "order_refunded":
        total = attributes.get("total")
        refunded = attributes.get("refunded_amount") or total
        return _take_back(event_id, event_type, order_id, total, refunded)
    return _ignore(event_id, event_type, f"event type {event_type} is not used")


def _credit(
    event_id: str,
    event_type: str,
    payment_id: Any,
    metadata: Any,
    amount: Any,
    currency: Any,
) -> PaymentEvent:
    if not payment_id:
        return _ignore(event_id, event_type, "no payment id in the event")
    metadata = _object(metadata)
    user_id = metadata.get("tally_user_id")
    if not isinstance(user_id, str) or not 1 <= len(user_id) <= MAX_USER_ID or "\x00" in user_id:
        return _ignore(event_id, event_type, "no tally_user_id in the payment's metadata")
    credits, problem = None, None
    if metadata.get("tally_credits") not in (None, ""):
        credits = _positive_int(metadata["tally_credits"])
        if credits is None:
            problem = (
                f"tally_credits {metadata['tally_credits']!r} is not an integer"
                f" from 1 to {MAX_AMOUNT}"
            )
    return PaymentEvent(
        event_id=event_id,
        event_type=event_type,
        action="credit",
        payment_id=str(payment_id),
        user_id=user_id,
        credits=credits,
        amount_minor=_positive_int(amount),
        currency=str(currency).lower() if currency else None,
        app_id=str(metadata["tally_app_id"]) if metadata.get("tally_app_id") else None,
        problem=problem,
    )


def _take_back(
    event_id: str, event_type: str, payment_id: Any, amount: Any, refunded: Any
) -> PaymentEvent:
    total, refunded_minor = _positive_int(amount), _positive_int(refunded)
    if not payment_id or total is None or refunded_minor is None:
        return _ignore(event_id, event_type, "refund without payment id or amounts")
    return PaymentEvent(
        event_id=event_id,
        event_type=event_type,
        action="take_back",
        payment_id=str(payment_id),
        amount_minor=total,
        refunded_minor=min(refunded_minor, total),
    )


def _ignore(event_id: str, event_type: str, reason: str) -> PaymentEvent:
    return PaymentEvent(event_id=event_id, event_type=event_type, action="ignore", reason=reason)


def credits_for(amount_minor: int, currency: str, credit_rate: Decimal) -> int:
    """Credits bought by `amount_minor` at `credit_rate` credits per major currency unit."""
    exponent = 0 if currency in _ZERO_DECIMAL else 3 if currency in _THREE_DECIMAL else 2
    major = Decimal(amount_minor).scaleb(-exponent)
    return int((major * credit_rate).to_integral_value(rounding=ROUND_FLOOR))


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    return value if isinstance(value, int) and 1 <= value <= MAX_AMOUNT else None


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
