"""Alembic migration environment of the store (a package so that env.py ships with the wheel)."""
