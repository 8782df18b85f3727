"""The numbers payment webhooks run by."""

# How far a provider's signature timestamp may be from now (Stripe's and Standard Webhooks').
TOLERANCE_SECONDS = 300
# The request that stores an event queues its job; the sweep queues it if that has not run
# within this lease (Redis was down, the process died).
LEASE_SECONDS = 30
# Applying an event is tried this often, backing off, before it is failed (or ignored).
APPLY_ATTEMPTS = 8
RETRY_CAP_SECONDS = 600
# Provider events can be larger than API calls; anything past this is not a payment event.
MAX_WEBHOOK_BYTES = 1_048_576
