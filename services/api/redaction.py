"""Signed links stay out of logs: the access log shows their path, never their signature.

A presigned URL (this API's `/v1/objects/...?sig=`, or S3's `X-Amz-Signature`, `X-Amz-Credential`)
is a bearer credential until it expires: whoever reads it in a log can download the archive. The
values of those query parameters are replaced before a record is formatted.
"""

from __future__ import annotations

import logging
import re

SECRET_PARAMS = (
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "awsaccesskeyid",
    # API keys sent in a URL: refused (services/api/guards.py), and never logged whole.
    "api_key",
    "apikey",
    "access_token",
)
_SECRET_VALUE = re.compile(rf"([?&](?:{'|'.join(SECRET_PARAMS)})=)[^&#\s\"']*", re.IGNORECASE)
REDACTED = "REDACTED"


def redact(text: str) -> str:
    return _SECRET_VALUE.sub(rf"\g<1>{REDACTED}", text)


class RedactSignedUrls(logging.Filter):
    """Redacts the secret query values in a record's message and its string arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


ACCESS_LOGGERS = ("uvicorn.access",)


def install() -> None:
    """Filter the access log. Called at the app's start-up, after uvicorn configured logging
    (logging.config.dictConfig replaces handlers, and a filter on the logger outlives that)."""
    for name in ACCESS_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSignedUrls) for f in logger.filters):
            logger.addFilter(RedactSignedUrls())
