"""Helpers for tests, benchmarks and staging: a throwaway PostgreSQL cluster and
a statement counter. Shipped in the package so bench/ scripts can use them."""
