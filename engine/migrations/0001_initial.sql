-- Apps, their API keys and settings, and the ledger.

CREATE TABLE apps (
    app_id                      text PRIMARY KEY,
    name                        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    overdraft_limit             bigint NOT NULL DEFAULT 0
                                CHECK (overdraft_limit BETWEEN 0 AND 9007199254740991),
    -- Credits per one major currency unit of a payment (webhooks without tally_credits).
    credit_rate                 numeric CHECK (credit_rate > 0),
    stripe_webhook_secret       text,
    polar_webhook_secret        text,
    lemonsqueezy_webhook_secret text,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    key_id      text PRIMARY KEY,
    app_id      text NOT NULL REFERENCES apps (app_id),
    -- SHA-256 of the whole key; the key itself is shown once and never stored.
    key_hash    bytea NOT NULL UNIQUE,
    -- The first characters of the key, so an operator can tell keys apart.
    key_prefix  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_app ON api_keys (app_id);

CREATE TABLE ledger_entries (
    ledger_id       uuid PRIMARY KEY,
    app_id          text NOT NULL REFERENCES apps (app_id),
    user_id         text NOT NULL,
    kind            text NOT NULL,
    amount          bigint NOT NULL CHECK (amount <> 0),
    balance_after   bigint NOT NULL,
    description     text,
    reference_id    text,
    metadata        jsonb,
    idempotency_key text,
    refund_of       uuid UNIQUE REFERENCES ledger_entries (ledger_id),
    created_at      timestamptz NOT NULL
);
CREATE INDEX ledger_entries_account ON ledger_entries (app_id, user_id, created_at DESC);
