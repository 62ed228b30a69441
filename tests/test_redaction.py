"""The access-log filter replaces the secret query values of signed links, and nothing else."""

from __future__ import annotations

import logging

from services.api.redaction import RedactSignedUrls, redact


def test_signatures_and_credentials_are_redacted_and_the_rest_kept() -> None:
    s3 = (
        "https://s3.example/b/jobs/j/archive.zip?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIA123%2F20261205%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261205T000000Z"
        "&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Security-Token=tok&X-Amz-Signature=deadbeef"
    )
    assert redact(s3) == (
        "https://s3.example/b/jobs/j/archive.zip?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=REDACTED&X-Amz-Date=20261205T000000Z"
        "&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Security-Token=REDACTED&X-Amz-Signature=REDACTED"
    )
    local = '"GET /v1/objects/jobs/j/archive.zip?expires=17&sig=c0ffee&filename=a.zip HTTP/1.1" 200'
    assert (
        redact(local)
        == '"GET /v1/objects/jobs/j/archive.zip?expires=17&sig=REDACTED&filename=a.zip HTTP/1.1" 200'
    )
    assert redact("/v1/jobs?signal=1&designer=x") == "/v1/jobs?signal=1&designer=x"


def test_the_filter_rewrites_an_access_record_arguments() -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s" %d',
        ("127.0.0.1:5", "GET", "/v1/objects/k?expires=1&sig=secret", 200), None,
    )  # fmt: skip
    assert RedactSignedUrls().filter(record)
    assert record.getMessage() == '127.0.0.1:5 - "GET /v1/objects/k?expires=1&sig=REDACTED" 200'
