-- The ledger, partitioned by month of created_at (docs/scaling.md): an insert touches only its
-- month's indexes, a user's history is one index scan per month, a lookup by ledger_id (whose
-- id carries its time, engine/store/keys.new_ledger_id) reads one month, and an old month can
-- be detached and archived whole (engine/ledger/retention.py). The rows move in this one
-- transaction: the worker's inserts wait for it (the outbox keeps them), the hot path does not.

ALTER TABLE ledger_entries RENAME TO ledger_entries_unpartitioned;
-- Frees the index names for the new table; the copy below reads the old table whole anyway.
ALTER TABLE ledger_entries_unpartitioned
    DROP CONSTRAINT ledger_entries_pkey,
    DROP CONSTRAINT ledger_entries_refund_of_key;
DROP INDEX ledger_entries_account, ledger_entries_account_seq, ledger_entries_hold;

-- LIKE keeps every column, in order, with its type, default, NOT NULL and CHECK: the table is
-- queried by operators, so its columns are a contract.
CREATE TABLE ledger_entries (
    LIKE ledger_entries_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS
        INCLUDING STORAGE INCLUDING COMMENTS
) PARTITION BY RANGE (created_at);

-- A month per month the old rows have, and this month and the next; months are UTC. The
-- worker keeps months ahead (engine/ledger/partitions.py); the DEFAULT partition takes
-- whatever no month does, so an insert never fails for want of one.
DO $$
DECLARE
    month timestamp;
    moved bigint;
BEGIN
    FOR month IN
        SELECT DISTINCT date_trunc('month', created_at AT TIME ZONE 'UTC')
        FROM ledger_entries_unpartitioned
        UNION
        SELECT date_trunc('month', now() AT TIME ZONE 'UTC') + step * interval '1 month'
        FROM generate_series(0, 1) AS step
    LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF ledger_entries FOR VALUES FROM (%L) TO (%L)',
            'ledger_entries_' || to_char(month, 'YYYY_MM'),
            month AT TIME ZONE 'UTC',
            (month + interval '1 month') AT TIME ZONE 'UTC'
        );
    END LOOP;
    CREATE TABLE ledger_entries_default PARTITION OF ledger_entries DEFAULT;

    -- Before any trigger exists: the summaries (0007) already count these rows.
    INSERT INTO ledger_entries SELECT * FROM ledger_entries_unpartitioned;
    GET DIAGNOSTICS moved = ROW_COUNT;
    IF moved <> (SELECT count(*) FROM ledger_entries_unpartitioned) THEN
        RAISE EXCEPTION 'ledger_entries: % rows moved, % expected', moved,
            (SELECT count(*) FROM ledger_entries_unpartitioned);
    END IF;
END
$$;

DROP TABLE ledger_entries_unpartitioned;

-- Built once over the moved rows, faster than kept up row by row. A unique index of a
-- partitioned table must include its partition key: a replayed entry carries the same
-- created_at (it travels with the entry through the outbox), so it still conflicts.
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_pkey PRIMARY KEY (ledger_id, created_at);
ALTER TABLE ledger_entries
    ADD CONSTRAINT ledger_entries_app_id_fkey FOREIGN KEY (app_id) REFERENCES apps (app_id);
CREATE INDEX ledger_entries_account ON ledger_entries (app_id, user_id, created_at DESC);
CREATE INDEX ledger_entries_account_seq ON ledger_entries (app_id, user_id, seq DESC);
CREATE INDEX ledger_entries_hold ON ledger_entries (hold_id) WHERE hold_id IS NOT NULL;
CREATE INDEX ledger_entries_refund ON ledger_entries (refund_of) WHERE refund_of IS NOT NULL;

-- One refund per entry, across every month: a unique index on refund_of alone cannot exist on
-- a month-partitioned table (and one on (refund_of, created_at) would guard nothing), so each
-- refund claims its refunded entry here. It is also where refunds are looked up: one probe
-- whatever the number of months, and it outlives an archived month.
CREATE TABLE ledger_refunds (
    refund_of uuid PRIMARY KEY,
    ledger_id uuid NOT NULL  -- the refund's own entry
);
INSERT INTO ledger_refunds (refund_of, ledger_id)
SELECT refund_of, ledger_id FROM ledger_entries WHERE refund_of IS NOT NULL;

-- As the unique index did: a second refund of an entry is skipped (the scripts already refuse
-- one; reconciliation would show it), while the same refund again reaches the primary key's
-- ON CONFLICT like any replayed entry. Two writers racing wait on the claim's row.
CREATE FUNCTION ledger_refund_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger_refunds (refund_of, ledger_id) VALUES (NEW.refund_of, NEW.ledger_id)
    ON CONFLICT (refund_of) DO NOTHING;
    IF FOUND OR EXISTS (
        SELECT 1 FROM ledger_refunds WHERE refund_of = NEW.refund_of AND ledger_id = NEW.ledger_id
    ) THEN
        RETURN NEW;
    END IF;
    RETURN NULL;
END
$$;
-- Fires for refunds only: the WHEN clause costs other rows nothing.
CREATE TRIGGER ledger_refund_once BEFORE INSERT ON ledger_entries
    FOR EACH ROW WHEN (NEW.refund_of IS NOT NULL) EXECUTE FUNCTION ledger_refund_once();

-- As 0007 made it: a statement trigger on the partitioned table sees the rows of every month.
CREATE TRIGGER ledger_summaries AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION ledger_summaries();

-- What each archived (detached) month held per account: hydration and reconciliation add it
-- to the rows still attached, so balances and sequences stay exact without the old rows.
CREATE TABLE ledger_archived (
    app_id          text NOT NULL,
    user_id         text NOT NULL,
    month           date NOT NULL,
    entries         bigint NOT NULL,
    amount          bigint NOT NULL,  -- the sum of the month's signed amounts
    last_seq        bigint NOT NULL,
    last_created_at timestamptz NOT NULL,
    PRIMARY KEY (app_id, user_id, month)
);
