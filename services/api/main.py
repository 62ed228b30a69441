"""ASGI entry for process managers: `uvicorn services.api.main:app` (settings from DIFFII_*)."""

from services.api.app import create_app

app = create_app()
