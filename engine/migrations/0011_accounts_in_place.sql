-- The Users page's order (most recent activity first) came from an index on last_activity_at,
-- which every persisted entry changes: each summary upsert of `accounts` (migration 0007) was a
-- new row version with an entry in every index of the table, ~17 µs of PostgreSQL's CPU per
-- entry, a quarter of the worker's and PostgreSQL's together. Without it no indexed column
-- changes and PostgreSQL updates the row in place (HOT). The page reads the app's accounts and
-- keeps the newest it shows: 20 ms a page at 100,000 users, 120 ms at 1,000,000
-- (docs/performance.md).
DROP INDEX accounts_activity;
