"""The numbers purchases and auto top-up run by."""

# How long one purchase may hold its idempotency key against a concurrent twin: longer than
# Stripe's timeout times its retries.
PURCHASE_LOCK_SECONDS = 120
STRIPE_TIMEOUT_SECONDS = 20
# Failed auto top-up rounds before it pauses (each round tries every card).
TOP_UP_ROUNDS = 3
# A claimed top-up is queued again after this unless its job finishes or reschedules it first.
TOP_UP_LEASE_MS = 120_000
