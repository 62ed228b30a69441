"""API keys: `dfi_<prefix>_<secret>`, shown once at creation, stored only as a sha256 hash.

The prefix is stored in clear so an operator can tell keys apart (and revoke one) without the secret.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.models import ApiKey, Owner, utcnow

KEY_SCHEME = "dfi"


@dataclass(frozen=True)
class NewKey:
    owner_id: str
    owner_name: str
    prefix: str
    key: str  # the plaintext, available only here


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> tuple[str, str]:
    """A fresh (prefix, key) pair."""
    prefix = secrets.token_hex(4)
    return prefix, f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"


def parse_prefix(key: str) -> str | None:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_SCHEME or not parts[1] or not parts[2]:
        return None
    return parts[1]


def get_or_create_owner(session: Session, name: str) -> Owner:
    name = name.strip()
    if not name:
        raise ValueError("owner name must not be empty")
    owner = session.scalar(select(Owner).where(Owner.name == name))
    if owner is None:
        owner = Owner(name=name)
        session.add(owner)
        session.flush()
    return owner


def create_key(session: Session, owner_name: str) -> NewKey:
    """Create a key for the owner (creating the owner if needed). The caller commits."""
    owner = get_or_create_owner(session, owner_name)
    prefix, key = generate_key()
    session.add(ApiKey(owner_id=owner.id, prefix=prefix, key_hash=hash_key(key)))
    session.flush()
    return NewKey(owner_id=owner.id, owner_name=owner.name, prefix=prefix, key=key)


def owner_id_for_key(session: Session, key: str) -> str | None:
    """The owner id of a valid, unrevoked key; None otherwise. One indexed query and no Owner row:
    this runs on every API request, the status polls included."""
    if parse_prefix(key) is None:
        return None
    return session.scalar(
        select(ApiKey.owner_id).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    )


def authenticate(session: Session, key: str) -> Owner | None:
    """The owner of a valid, unrevoked key; None otherwise."""
    if parse_prefix(key) is None:
        return None
    api_key = session.scalar(
        select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    )
    return api_key.owner if api_key is not None else None


def revoke_key(session: Session, prefix: str) -> int:
    """Revoke every active key with this prefix; returns how many were revoked."""
    keys = session.scalars(select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))).all()
    for api_key in keys:
        api_key.revoked_at = utcnow()
    return len(keys)
