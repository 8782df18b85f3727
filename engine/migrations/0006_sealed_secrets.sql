-- Secrets are sealed by Tally (engine/vault) before they are stored, so PostgreSQL can no longer
-- make an app's client token signing secret: Tally makes it with the app's first client token.
-- `tally migrate` seals the values stored in plain text before this version.
ALTER TABLE apps
    ALTER COLUMN client_token_secret DROP DEFAULT,
    ALTER COLUMN client_token_secret DROP NOT NULL;
