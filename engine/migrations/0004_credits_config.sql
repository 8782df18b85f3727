-- Per-app credits configuration (the settings the reauth credits system exposes).
ALTER TABLE apps
    ADD COLUMN credits_enabled boolean NOT NULL DEFAULT true,
    -- Credits one dollar buys; purchases use it, and webhooks when credit_rate is not set.
    ADD COLUMN credits_per_dollar numeric CHECK (credits_per_dollar > 0),
    ADD COLUMN display_name text NOT NULL DEFAULT 'Credits'
        CHECK (length(display_name) BETWEEN 1 AND 50),
    ADD COLUMN display_symbol text CHECK (length(display_symbol) BETWEEN 1 AND 8),
    ADD COLUMN display_symbol_position text NOT NULL DEFAULT 'left'
        CHECK (display_symbol_position IN ('left', 'right')),
    ADD COLUMN display_decimals integer NOT NULL DEFAULT 0 CHECK (display_decimals BETWEEN 0 AND 8),
    ADD COLUMN min_purchase_cents bigint NOT NULL DEFAULT 100 CHECK (min_purchase_cents >= 0),
    ADD COLUMN max_purchase_cents bigint NOT NULL DEFAULT 100000,
    ADD COLUMN overdraft_enabled boolean NOT NULL DEFAULT false,
    ADD COLUMN manual_top_up_available boolean NOT NULL DEFAULT false,
    ADD COLUMN auto_top_up_available boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT purchase_limits CHECK (min_purchase_cents <= max_purchase_cents);

-- Until now a positive overdraft_limit was the switch.
UPDATE apps SET overdraft_enabled = overdraft_limit > 0;
