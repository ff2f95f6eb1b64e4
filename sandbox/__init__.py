"""Throw-away PostgreSQL and sample data, shared by the tests and the demo."""
