"""Portal accounts: users (argon2id password hashes), sign-in with slow-down and lock-out, and server-side
sessions whose cookie token is stored only as its SHA-256.

A user acts with its organization's role: :func:`caller_of` turns a signed-in user into the same
:class:`~app.services.keys.Caller` an API key gives, so every service function scopes the portal exactly as it
scopes the API.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Organization, PortalSession, SignInThrottle, User
from app.services.errors import Forbidden, Invalid, ServiceError
from app.services.keys import Caller, get_or_create_org

_hasher = PasswordHasher()  # argon2id, the library's (OWASP-level) default cost
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
PASSWORD_MIN = 10
PASSWORD_MAX = 1024
#: hashed against an unknown email, so a sign-in takes as long whether the account exists or not
_DUMMY_HASH = _hasher.hash("not a password of anyone")


class SignInRefused(ServiceError):
    """Wrong email or password (the same answer for both), or a locked email; ``wait`` seconds to slow down."""

    status, type, title = 401, "/problems/sign-in-refused", "Sign-in refused"

    def __init__(self, detail: str, *, wait: float = 0.0, locked: bool = False) -> None:
        super().__init__(detail)
        self.wait = wait
        self.locked = locked


@dataclass(frozen=True)
class SessionPolicy:
    """How long a session lasts, and how sign-in failures are slowed and locked out (from settings)."""

    lifetime: timedelta = timedelta(hours=12)
    idle: timedelta = timedelta(hours=2)
    max_failures: int = 5
    lockout: timedelta = timedelta(minutes=15)

    @classmethod
    def from_settings(cls, settings) -> SessionPolicy:
        return cls(lifetime=timedelta(seconds=settings.session_lifetime_seconds),
                   idle=timedelta(seconds=settings.session_idle_seconds),
                   max_failures=settings.sign_in_max_failures,
                   lockout=timedelta(seconds=settings.sign_in_lockout_seconds))


def normal_email(email: str) -> str:
    return (email or "").strip().lower()


def check_password_rules(password: str) -> None:
    if not PASSWORD_MIN <= len(password or "") <= PASSWORD_MAX:
        raise Invalid(f"password: use {PASSWORD_MIN} to {PASSWORD_MAX} characters", field="password")


def create_user(session: Session, *, org_name: str, role: str, email: str, password: str,
                admin: bool = False) -> User:
    """A user of organization ``org_name`` (created with ``role`` if new), its password stored as argon2id. The
    organization's first user is its admin (manages its API keys); later ones are when ``admin``."""
    email = normal_email(email)
    if not _EMAIL.match(email) or len(email) > 320:
        raise Invalid(f"email: {email!r} is not an email address", field="email")
    check_password_rules(password)
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise Invalid(f"email: a user with {email} exists already", field="email")
    org = get_or_create_org(session, org_name, role)
    first = session.scalar(select(User.id).where(User.org_id == org.id).limit(1)) is None
    user = User(org_id=org.id, email=email, password_hash=_hasher.hash(password), password_changed_at=utcnow(),
                is_admin=admin or first)
    session.add(user)
    session.flush()
    return user


def _throttle(session: Session, email: str) -> SignInThrottle:
    row = session.get(SignInThrottle, email)
    if row is None:
        row = SignInThrottle(email=email, failures=0)
        session.add(row)
    return row


def _slow_down(failures: int) -> float:
    """Seconds to wait before answering the ``failures``-th failure in a row: 0.25, 0.5, 1, 2, then 4."""
    return min(0.25 * 2 ** max(failures - 1, 0), 4.0)


def sign_in(session: Session, email: str, password: str, policy: SessionPolicy,
            now: datetime | None = None) -> User:
    """The user whose email and password these are; else :class:`SignInRefused` (counted against the email,
    which is locked for ``policy.lockout`` after ``policy.max_failures`` failures in a row)."""
    now = now or utcnow()
    email = normal_email(email)
    throttle = _throttle(session, email)
    if throttle.locked_until is not None and throttle.locked_until > now:
        minutes = max(1, round((throttle.locked_until - now).total_seconds() / 60))
        raise SignInRefused(f"too many failed sign-ins for this email; try again in about {minutes} minute(s)",
                            locked=True)
    user = session.scalar(select(User).where(User.email == email))
    try:
        ok = _hasher.verify(user.password_hash if user else _DUMMY_HASH, password or "") and user is not None
    except (VerificationError, InvalidHashError):
        ok = False
    if not ok:
        throttle.failures = (throttle.failures or 0) + 1
        throttle.last_failure_at = now
        locked = throttle.failures >= policy.max_failures
        if locked:
            throttle.locked_until = now + policy.lockout
            throttle.failures = 0
        session.flush()
        raise SignInRefused("wrong email or password" + ("; this email is now locked for "
                                                         f"{int(policy.lockout.total_seconds() // 60)} minutes"
                                                         if locked else ""),
                            wait=_slow_down(throttle.failures or policy.max_failures), locked=locked)
    throttle.failures, throttle.locked_until = 0, None
    user.last_sign_in_at = now
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    session.flush()
    return user


def change_password(session: Session, user: User, current: str, new: str) -> None:
    try:
        _hasher.verify(user.password_hash, current or "")
    except (VerificationError, InvalidHashError):
        raise Invalid("current password: that is not your password", field="current_password") from None
    check_password_rules(new)
    if new == current:
        raise Invalid("new password: choose a password other than the current one", field="new_password")
    user.password_hash = _hasher.hash(new)
    user.password_changed_at = utcnow()
    session.flush()


# --- sessions --------------------------------------------------------------------------------------------------


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(session: Session, user: User, policy: SessionPolicy) -> str:
    """A new session for ``user``; the token for its cookie (only its SHA-256 is stored)."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(PortalSession(user_id=user.id, token_hash=_digest(token), expires_at=now + policy.lifetime,
                              last_seen_at=now))
    session.flush()
    return token


@dataclass(frozen=True)
class SignedIn:
    user: User
    org: Organization
    session_id: str

    @property
    def caller(self) -> Caller:
        return caller_of(self.user, self.org)


def caller_of(user: User, org: Organization) -> Caller:
    return Caller(org_id=org.id, org_name=org.name, role=org.role, key_id=f"user:{user.id}")


def session_user(session: Session, token: str | None, policy: SessionPolicy,
                 now: datetime | None = None) -> SignedIn | None:
    """Who holds this cookie token: None when it is unknown, revoked, past its lifetime or idle too long."""
    if not token:
        return None
    now = now or utcnow()
    row = session.execute(
        select(PortalSession, User, Organization).join(User, User.id == PortalSession.user_id)
        .join(Organization, Organization.id == User.org_id).where(PortalSession.token_hash == _digest(token))
    ).first()
    if row is None:
        return None
    ps, user, org = row
    if ps.revoked_at is not None or ps.expires_at <= now or ps.last_seen_at + policy.idle <= now:
        return None
    if now - ps.last_seen_at > timedelta(minutes=1):  # at most one write a minute per session
        session.execute(update(PortalSession).where(PortalSession.id == ps.id).values(last_seen_at=now))
    return SignedIn(user, org, ps.id)


def close_session(session: Session, token: str | None) -> None:
    if token:
        session.execute(update(PortalSession).where(PortalSession.token_hash == _digest(token),
                                                    PortalSession.revoked_at.is_(None)).values(revoked_at=utcnow()))


def close_other_sessions(session: Session, user: User, keep_session_id: str) -> None:
    """After a password change: every other session of the user ends."""
    session.execute(update(PortalSession).where(PortalSession.user_id == user.id, PortalSession.id != keep_session_id,
                                                PortalSession.revoked_at.is_(None)).values(revoked_at=utcnow()))


def csrf_token(session_token: str) -> str:
    """The form token of a session: derived from the (secret, HttpOnly) cookie token, so a page from another site
    can neither read nor compute it, and nothing more is stored."""
    return hmac.new(session_token.encode(), b"appraise-csrf", hashlib.sha256).hexdigest()


def csrf_ok(session_token: str | None, submitted: str | None) -> bool:
    return bool(session_token and submitted) and hmac.compare_digest(csrf_token(session_token), submitted)


def require_org_admin(user: User) -> None:
    """Managing an organization's API keys is for its admins (its first user, or one made with --admin)."""
    if not user.is_admin:
        raise Forbidden("only an admin of your organization may manage its API keys")
