"""Organizations and API keys. A key is ``apr_<prefix>_<secret>``: the prefix finds the row, the SHA-256 of the
whole key is what is stored (the secret has 256 bits of entropy, so a fast hash is enough); shown once."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
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


def revoke_key(session: Session, prefix: str) -> ApiKey:
    """Revoke the key with this public prefix (``apr_<prefix>_...``): it stops authenticating at once in new API
    processes and within the auth cache's TTL in running ones."""
    prefix = prefix.removeprefix(KEY_PREFIX).split("_", 1)[0]
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if row is None:
        raise Invalid(f"no API key with prefix {prefix!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def org_keys(session: Session, org_id: str) -> list[ApiKey]:
    """One organization's keys, newest first (prefixes and dates, never secrets)."""
    return list(session.scalars(select(ApiKey).where(ApiKey.org_id == org_id)
                                .order_by(ApiKey.created_at.desc(), ApiKey.id)).all())


def revoke_org_key(session: Session, org_id: str, key_id: str) -> ApiKey:
    """Revoke one of an organization's keys (another organization's key is a 404)."""
    from app.services.errors import NotFound

    row = session.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.org_id == org_id))
    if row is None:
        raise NotFound(f"key {key_id} not found", key_id=key_id)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row


def list_keys(session: Session, org_name: str | None = None) -> list[tuple[ApiKey, Organization]]:
    """Every key (or one organization's) with its organization, newest first: prefixes and dates, never secrets."""
    stmt = select(ApiKey, Organization).join(Organization, Organization.id == ApiKey.org_id)
    if org_name is not None:
        stmt = stmt.where(Organization.name == org_name)
    return [(k, o) for k, o in session.execute(stmt.order_by(ApiKey.created_at.desc(), ApiKey.id)).all()]


def authenticate(session: Session, key: str, cache: AuthCache | None = None) -> Caller:
    """The caller behind a bearer key, or :class:`Unauthorized` (same message whatever was wrong).

    One query (key joined with its organization). The caller is put in ``cache``; checking the cache first is
    :func:`cached_caller`'s job (no query, no thread)."""
    bad = Unauthorized("a valid API key is required: Authorization: Bearer apr_...")
    if not key.startswith(KEY_PREFIX) or key.count("_") < 2 or len(key) > 200:
        raise bad
    digest = hash_key(key)
    prefix = key[len(KEY_PREFIX) :].split("_", 1)[0]
    row = session.execute(
        select(ApiKey.id, ApiKey.key_hash, ApiKey.revoked_at, ApiKey.last_used_at, Organization.id,
               Organization.name, Organization.role)
        .join(Organization, Organization.id == ApiKey.org_id)
        .where(ApiKey.prefix == prefix)
    ).first()
    if row is None or row[2] is not None or not hmac.compare_digest(row[1], digest):
        raise bad
    key_id, _, _, last_used, org_id, org_name, role = row
    now = utcnow()
    if last_used is None or (now - last_used).total_seconds() > LAST_USED_RESOLUTION_S:
        _touch(session, key_id, now)
    caller = Caller(org_id=org_id, org_name=org_name, role=role, key_id=key_id)
    if cache is not None:
        cache.put(digest, caller)
    return caller


def cached_caller(cache: AuthCache | None, key: str) -> Caller | None:
    """The caller of a key checked in the last few seconds, without touching the database (None: look it up)."""
    if cache is None or not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    return cache.get(hash_key(key))


class AuthCache:
    """Recently authenticated keys (by hash, never the key itself) → caller, for ``ttl`` seconds: a read-heavy
    client (polling a job) costs one authentication query per ``ttl`` and process, not one per request. A revoked
    key keeps working in another process for at most ``ttl`` seconds (in the process that revoked it, not at
    all)."""

    def __init__(self, ttl: float = 2.0, max_entries: int = 10_000) -> None:
        self.ttl, self.max_entries = ttl, max_entries
        self._entries: dict[str, tuple[float, Caller]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> Caller | None:
        entry = self._entries.get(digest)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, digest: str, caller: Caller) -> None:
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[digest] = (time.monotonic() + self.ttl, caller)

    def forget_key(self, key_id: str) -> None:
        """Drop a key revoked through this process (the others stop accepting it within ``ttl``)."""
        with self._lock:
            for digest in [d for d, (_, c) in self._entries.items() if c.key_id == key_id]:
                del self._entries[digest]


def _touch(session: Session, key_id: str, now) -> None:
    """Record the key's use, at most once a minute, in its own short transaction and best effort: the request's
    own transaction stays read-only (a read followed by a write is what SQLite refuses when a worker has committed
    in between), and a busy database never fails a request over bookkeeping."""
    try:
        with session.get_bind().connect() as conn, conn.begin():
            conn.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now))
    except (OperationalError, PoolTimeout):  # a full pool, too, skips the bookkeeping
        pass
