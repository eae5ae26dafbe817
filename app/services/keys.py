"""Organizations and API keys. A key is ``apr_<prefix>_<secret>``: the prefix finds the row, the SHA-256 of the
whole key is what is stored (the secret has 256 bits of entropy, so a fast hash is enough); shown once."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import ROLES, ApiKey, Organization
from app.services.errors import Invalid, Unauthorized

KEY_PREFIX = "apr_"
LAST_USED_RESOLUTION_S = 60


@dataclass(frozen=True)
class Caller:
    """Who is calling: every service function takes one and scopes its queries to ``org_id``."""

    org_id: str
    org_name: str
    role: str
    key_id: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_org(session: Session, name: str, role: str) -> Organization:
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    name = name.strip()
    if not name:
        raise Invalid("organization name must not be empty")
    org = session.scalar(select(Organization).where(Organization.name == name))
    if org is None:
        org = Organization(name=name, role=role)
        session.add(org)
        session.flush()
    elif org.role != role:
        raise Invalid(f"organization {name!r} exists with role {org.role!r}, not {role!r}")
    return org


def create_key(session: Session, org: Organization, name: str | None = None) -> tuple[ApiKey, str]:
    """A new key for ``org``: the row and the plaintext key (returned once, never stored)."""
    prefix = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(org_id=org.id, prefix=prefix, key_hash=hash_key(key), name=name)
    session.add(row)
    session.flush()
    return row, key


def authenticate(session: Session, key: str) -> Caller:
    """The caller behind a bearer key, or :class:`Unauthorized` (same message whatever was wrong)."""
    bad = Unauthorized("a valid API key is required: Authorization: Bearer apr_...")
    if not key.startswith(KEY_PREFIX) or key.count("_") < 2:
        raise bad
    prefix = key[len(KEY_PREFIX) :].split("_", 1)[0]
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, hash_key(key)):
        raise bad
    org = session.get(Organization, row.org_id)
    if org is None:
        raise bad
    now = utcnow()
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() > LAST_USED_RESOLUTION_S:
        _touch(session, row.id, now)
    return Caller(org_id=org.id, org_name=org.name, role=org.role, key_id=row.id)


def _touch(session: Session, key_id: str, now) -> None:
    """Record the key's use, at most once a minute, in its own short transaction and best effort: the request's
    own transaction stays read-only (a read followed by a write is what SQLite refuses when a worker has committed
    in between), and a busy database never fails a request over bookkeeping."""
    try:
        with session.get_bind().connect() as conn, conn.begin():
            conn.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now))
    except OperationalError:
        pass
