"""Keyset cursors over (created_at, id): stable under inserts, no OFFSET scans.

A cursor is `<microseconds since the epoch>_<job id>`, a shape the OpenAPI schema states exactly
(CURSOR_PATTERN), so every cursor the schema calls valid is one the API accepts.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from fastapi import HTTPException, status

from services.common.timeutil import as_utc

CURSOR_PATTERN = r"^[0-9]{1,16}_[0-9a-f]{1,32}$"  # 16 digits reach past the year 2200
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def encode_cursor(created_at: datetime, row_id: str) -> str:
    # Integer arithmetic: a float timestamp would lose the last microsecond and skip a row.
    return f"{(as_utc(created_at) - EPOCH) // _MICROSECOND}_{row_id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    if not re.match(CURSOR_PATTERN, cursor):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [
                {
                    "loc": ["query", "cursor"],
                    "msg": "invalid cursor: pass next_cursor as given",
                    "type": "value_error",
                }
            ],
        )
    micros, row_id = cursor.split("_", 1)
    return EPOCH + int(micros) * _MICROSECOND, row_id
