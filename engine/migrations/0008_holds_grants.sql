-- Holds and grants (docs/holds-and-grants.md): what each entry did to them, so that Redis can
-- rebuild an account's grants and holds from the ledger and reconciliation can check them.

ALTER TABLE ledger_entries
    -- The hold an entry made (kind hold) or settled (its capture, release or expiry).
    ADD COLUMN hold_id    text,
    -- Change of the account's held credits: +amount on a hold, -amount when it is settled.
    ADD COLUMN held       bigint,
    -- When a grant (an add with expires_at) or a hold expires.
    ADD COLUMN expires_at timestamptz,
    -- [{"grant_id", "amount"}]: grant credits the entry took (negative) or gave back; on a hold,
    -- what it reserved.
    ADD COLUMN grants     jsonb;

-- Holds and their settling entries change no balance: their amount is 0.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_amount_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_amount_check
    CHECK (amount <> 0 OR kind IN ('hold', 'release', 'hold_expire')) NOT VALID;
ALTER TABLE ledger_entries VALIDATE CONSTRAINT ledger_entries_amount_check;

CREATE INDEX ledger_entries_hold ON ledger_entries (hold_id) WHERE hold_id IS NOT NULL;
