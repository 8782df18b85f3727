-- When each entry reached PostgreSQL: created_at to persisted_at is the write-through lag.
ALTER TABLE ledger_entries ADD COLUMN persisted_at timestamptz NOT NULL DEFAULT now();
