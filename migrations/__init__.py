"""Alembic migrations of the diffii state database (run by `diffii migrate`)."""
