"""A job's `dataset_uri`: `s3://bucket/key` of an archive in a bucket the operator allowed.

One parser: the API's request validation, its OpenAPI pattern and the worker's fetch all read the URI
through `parse_s3_uri`, so the three never disagree on what a bucket or a key is.
"""

from __future__ import annotations

import re
from typing import NamedTuple

BUCKET = r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]"  # an S3 bucket name
PRINTED = r"[^\x00-\x1f\x7f-\x9f]"  # no control character
S3_URI_PATTERN = rf"^s3://{BUCKET}/{PRINTED}+$"  # what the request schema states
_URI = re.compile(rf"^s3://(?P<bucket>{BUCKET})/(?P<key>{PRINTED}+)$")


class S3Uri(NamedTuple):
    bucket: str
    key: str

    @property
    def filename(self) -> str:
        """The key's last part: the name the user gave the archive."""
        return self.key.rsplit("/", 1)[-1]


def parse_s3_uri(uri: str) -> S3Uri | None:
    """The bucket and key of an `s3://bucket/key` URI; None for anything else."""
    match = _URI.match(uri)
    return S3Uri(match["bucket"], match["key"]) if match else None


def s3_uri_pattern(buckets: list[str] | set[str] | tuple[str, ...]) -> str:
    """S3_URI_PATTERN narrowed to the named buckets (the OpenAPI document of a server states its own)."""
    names = "|".join(re.escape(b) for b in sorted(buckets))
    return rf"^s3://({names})/{PRINTED}+$"
