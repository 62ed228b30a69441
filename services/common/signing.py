"""Expiring HMAC-signed download links for the local object store.

S3 has presigned URLs; a local folder has none, so the API serves `GET /v1/objects/{key}` and
accepts only links this module signed: key, expiry and download filename are all covered by the MAC.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from pathlib import Path
from urllib.parse import quote, urlencode

OBJECTS_ROUTE = "/v1/objects/"


def _mac(secret: str, key: str, expires: int, filename: str | None) -> str:
    message = "\n".join([key, str(expires), filename or ""]).encode("utf-8")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signed_object_url(
    base_url: str, secret: str, key: str, expires_in: int, filename: str | None = None
) -> str:
    expires = int(time.time()) + expires_in
    query: dict[str, str] = {"expires": str(expires), "sig": _mac(secret, key, expires, filename)}
    if filename:
        query["filename"] = filename
    return f"{base_url.rstrip('/')}{OBJECTS_ROUTE}{quote(key, safe='/')}?{urlencode(query)}"


def verify_object_signature(
    secret: str, key: str, expires: int, sig: str, filename: str | None = None, now: float | None = None
) -> bool:
    """True when the signature matches and the link has not expired."""
    if expires < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(_mac(secret, key, expires, filename), sig)


def load_or_create_secret(path: Path) -> str:
    """A per-installation secret kept beside the embedded state, so every API process agrees on it."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_text(candidate)
    tmp.chmod(0o600)
    try:
        # link() fails if another process won the race; then everyone uses the winner's secret.
        path.hardlink_to(tmp)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()
