"""Opaque keyset cursors over (created_at, id): stable under inserts, no OFFSET scans."""

from __future__ import annotations

import base64
import json
from datetime import datetime

from fastapi import HTTPException, status


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, row_id = json.loads(raw)
        return datetime.fromisoformat(created), str(row_id)
    except (ValueError, TypeError) as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [
                {
                    "loc": ["query", "cursor"],
                    "msg": "invalid cursor: pass next_cursor as given",
                    "type": "value_error",
                }
            ],
        ) from exc
