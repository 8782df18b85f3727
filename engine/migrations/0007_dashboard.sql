-- The dashboard: its operators, their sessions and what they changed; and the summaries of the
-- ledger its pages read, kept by a trigger so any page is one indexed lookup at any size.

CREATE TABLE operators (
    email         text PRIMARY KEY CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 254),
    -- scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64> (engine/operators/passwords.py)
    password_hash text NOT NULL,
    role          text NOT NULL CHECK (role IN ('admin', 'viewer')),
    disabled_at   timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE operator_sessions (
    -- SHA-256 of the cookie's token: a copy of this table signs nobody in.
    token_hash  bytea PRIMARY KEY,
    email       text NOT NULL REFERENCES operators (email),
    csrf_token  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX operator_sessions_email ON operator_sessions (email);

-- Failed sign-ins, counted per email over a sliding window; old rows are deleted as new come.
CREATE TABLE sign_in_failures (
    email       text NOT NULL,
    failed_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sign_in_failures_email ON sign_in_failures (email, failed_at);

CREATE TABLE audit_log (
    audit_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    operator    text NOT NULL,
    app_id      text,
    action      text NOT NULL,
    -- What changed: names and new values, a secret only as "set" or "removed".
    details     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at DESC);

-- When a key last authenticated, to within the API's key cache (TALLY_AUTH_CACHE_SECONDS).
ALTER TABLE api_keys ADD COLUMN last_used_at timestamptz;

-- One row per account the ledger knows: the Users page lists and searches these.
CREATE TABLE accounts (
    app_id           text NOT NULL,
    user_id          text NOT NULL,
    balance          bigint NOT NULL,  -- balance_after of the account's latest persisted entry
    last_seq         bigint NOT NULL,
    last_activity_at timestamptz NOT NULL,
    PRIMARY KEY (app_id, user_id)
);
CREATE INDEX accounts_activity ON accounts (app_id, last_activity_at DESC, user_id DESC);
CREATE INDEX accounts_user_prefix ON accounts (app_id, user_id text_pattern_ops);

-- Entries and credits per app, UTC hour and kind: the Overview's charts and today's totals.
CREATE TABLE ledger_hourly (
    app_id   text NOT NULL,
    hour     timestamptz NOT NULL,
    kind     text NOT NULL,
    entries  bigint NOT NULL,
    credits  bigint NOT NULL,  -- the sum of the signed amounts
    PRIMARY KEY (app_id, hour, kind)
);

-- Credits each user consumed (deducts) per UTC day: the Overview's top users.
CREATE TABLE usage_daily (
    app_id   text NOT NULL,
    day      date NOT NULL,
    user_id  text NOT NULL,
    deducted bigint NOT NULL,
    PRIMARY KEY (app_id, day, user_id)
);

-- Deducts refused for insufficient credits per app and UTC hour. They write no entry, so each
-- API process counts them and adds its counts here every few seconds.
CREATE TABLE refusals_hourly (
    app_id   text NOT NULL,
    hour     timestamptz NOT NULL,
    refusals bigint NOT NULL,
    PRIMARY KEY (app_id, hour)
);

-- Whoever inserts entries (the outbox writer, a restore), the summaries follow in the same
-- transaction. Rows are upserted in key order, so concurrent writers cannot deadlock.
CREATE FUNCTION ledger_summaries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO accounts AS a (app_id, user_id, balance, last_seq, last_activity_at)
    SELECT app_id, user_id, (array_agg(balance_after ORDER BY seq DESC))[1], max(seq),
           max(created_at)
    FROM new_entries GROUP BY app_id, user_id ORDER BY app_id, user_id
    ON CONFLICT (app_id, user_id) DO UPDATE SET
        balance = CASE WHEN excluded.last_seq > a.last_seq THEN excluded.balance ELSE a.balance END,
        last_seq = greatest(a.last_seq, excluded.last_seq),
        last_activity_at = greatest(a.last_activity_at, excluded.last_activity_at);

    INSERT INTO ledger_hourly AS h (app_id, hour, kind, entries, credits)
    SELECT app_id, date_trunc('hour', created_at, 'UTC'), kind, count(*), sum(amount)
    FROM new_entries GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (app_id, hour, kind) DO UPDATE SET
        entries = h.entries + excluded.entries, credits = h.credits + excluded.credits;

    INSERT INTO usage_daily AS u (app_id, day, user_id, deducted)
    SELECT app_id, (created_at AT TIME ZONE 'UTC')::date, user_id, -sum(amount)
    FROM new_entries WHERE kind = 'deduct' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (app_id, day, user_id) DO UPDATE SET deducted = u.deducted + excluded.deducted;
    RETURN NULL;
END
$$;

CREATE TRIGGER ledger_summaries AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION ledger_summaries();

-- The summaries of the entries already there.
INSERT INTO accounts (app_id, user_id, balance, last_seq, last_activity_at)
SELECT app_id, user_id, (array_agg(balance_after ORDER BY seq DESC))[1], max(seq), max(created_at)
FROM ledger_entries GROUP BY app_id, user_id;
INSERT INTO ledger_hourly (app_id, hour, kind, entries, credits)
SELECT app_id, date_trunc('hour', created_at, 'UTC'), kind, count(*), sum(amount)
FROM ledger_entries GROUP BY 1, 2, 3;
INSERT INTO usage_daily (app_id, day, user_id, deducted)
SELECT app_id, (created_at AT TIME ZONE 'UTC')::date, user_id, -sum(amount)
FROM ledger_entries WHERE kind = 'deduct' GROUP BY 1, 2, 3;
