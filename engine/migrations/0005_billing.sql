-- End-user access (client tokens, CORS), stored cards, purchases and auto top-up.
ALTER TABLE apps
    -- Signs client tokens; rotating it revokes every token issued so far.
    ADD COLUMN client_token_secret text NOT NULL
        DEFAULT replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''),
    -- Browser origins allowed to call /client/... (exact matches, e.g. https://app.example.com).
    ADD COLUMN cors_origins text[] NOT NULL DEFAULT '{}',
    -- The app's Stripe secret key: purchases and stored cards run on the app's own account.
    ADD COLUMN stripe_secret_key text,
    ADD COLUMN currency text NOT NULL DEFAULT 'usd' CHECK (currency ~ '^[a-z]{3}$'),
    -- What auto top-up may spend per user per UTC day: stops a runaway loop of top-ups.
    ADD COLUMN auto_top_up_daily_limit_cents bigint NOT NULL DEFAULT 100000
        CHECK (auto_top_up_daily_limit_cents >= 0);

CREATE TABLE stripe_customers (
    app_id      text NOT NULL REFERENCES apps (app_id),
    user_id     text NOT NULL,
    customer_id text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, user_id)
);

-- Stripe holds the cards; Tally holds their order (first = charged first).
CREATE TABLE payment_methods (
    app_id            text NOT NULL REFERENCES apps (app_id),
    user_id           text NOT NULL,
    payment_method_id text NOT NULL,
    priority          integer NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, user_id, payment_method_id)
);

CREATE TABLE purchases (
    purchase_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    app_id            text NOT NULL REFERENCES apps (app_id),
    user_id           text NOT NULL,
    idempotency_key   text NOT NULL,
    -- client (a user bought credits) or auto_top_up.
    source            text NOT NULL,
    amount_cents      bigint NOT NULL CHECK (amount_cents > 0),
    currency          text NOT NULL,
    credits           bigint NOT NULL CHECK (credits > 0),
    payment_method_id text NOT NULL,
    payment_intent_id text UNIQUE,
    -- pending, succeeded (credited), requires_action, processing or failed.
    status            text NOT NULL DEFAULT 'pending',
    failure_code      text,
    failure_message   text,
    ledger_id         uuid,
    balance_after     bigint,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (app_id, user_id, idempotency_key)
);
CREATE INDEX purchases_daily ON purchases (app_id, user_id, created_at) WHERE source = 'auto_top_up';

CREATE TABLE auto_top_ups (
    app_id                text NOT NULL REFERENCES apps (app_id),
    user_id               text NOT NULL,
    enabled               boolean NOT NULL,
    threshold_cents       bigint NOT NULL CHECK (threshold_cents >= 0),
    purchase_amount_cents bigint NOT NULL CHECK (purchase_amount_cents >= 0),
    -- active, retrying or paused.
    status                text NOT NULL DEFAULT 'active',
    last_failure_reason   text,
    retries_remaining     integer NOT NULL,
    next_retry_at         timestamptz,
    last_top_up_at        timestamptz,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, user_id)
);
