"""Adapters: Redis, PostgreSQL, exchanges, embedded servers, notifier."""
