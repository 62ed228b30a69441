"""The REST API: a thin FastAPI adapter over services/common (see docs/ARCHITECTURE.md)."""
