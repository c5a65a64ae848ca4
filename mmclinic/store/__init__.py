"""Persistence: typed ORM, repository functions, database job queue, audit chain, Alembic migrations.

Never imports torch: the API and the CLI load it, and the worker talks to the engine through a Protocol.
"""
