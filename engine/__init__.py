"""Tally's domain: credits operations on Redis, the PostgreSQL ledger and app registry."""
