"""Users and bearer tokens: create, issue (shown once, stored as SHA-256), authenticate, revoke."""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from mmclinic.case import sha256_bytes
from mmclinic.errors import AuthError, ConflictError, InputError, NotFoundError
from mmclinic.store.models import ROLES, Token, User, utcnow

TOKEN_PREFIX = "mmc_"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")
_SITE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller as the API sees it."""

    user_id: int | None
    name: str
    role: str
    site: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def can_see_site(self, site: str) -> bool:
        """Admins see every site; everyone else only their own."""
        return self.is_admin or site == self.site


def token_hash(token: str) -> str:
    """What is stored for a token."""
    return sha256_bytes(token.encode())


def validate_site(site: str) -> str:
    """A site code: short, no spaces (it appears in paths, filters and audit rows)."""
    if not _SITE_RE.match(site):
        raise InputError("input.bad_site", "site must be 1-64 characters of letters, digits, '_', '.', '-'")
    return site


def create_user(session: Session, name: str, role: str, site: str) -> User:
    """Add a user; ConflictError if the name is taken."""
    if not _NAME_RE.match(name):
        raise InputError("input.bad_user_name", "user name must be 1-128 characters of letters, digits, _.@-")
    if role not in ROLES:
        raise InputError("input.bad_role", f"role must be one of {', '.join(ROLES)}")
    validate_site(site)
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        raise ConflictError("conflict.user_exists", "a user with this name already exists")
    user = User(name=name, role=role, site=site, active=True)
    session.add(user)
    session.flush()
    return user


def get_user(session: Session, name: str) -> User:
    """The user named ``name``; NotFoundError otherwise."""
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFoundError("not_found.user", "no such user")
    return user


def issue_token(session: Session, user: User, label: str = "", expires_at: datetime | None = None) -> tuple[Token, str]:
    """A new token for ``user``: returns the row and the secret (the only time it exists in clear)."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = Token(
        user_id=user.id, token_sha256=token_hash(secret), prefix=secret[:10], label=label[:128], expires_at=expires_at
    )
    session.add(row)
    session.flush()
    return row, secret


def revoke_token(session: Session, token_id: int) -> Token:
    """Mark a token revoked (idempotent)."""
    row = session.get(Token, token_id)
    if row is None:
        raise NotFoundError("not_found.token", "no such token")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    session.flush()
    return row


def authenticate(session: Session, secret: str) -> Principal:
    """The principal owning a valid, unexpired, unrevoked token of an active user; AuthError otherwise."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 128:
        raise AuthError("auth.invalid_token", "the bearer token is not valid")
    digest = token_hash(secret)
    found = session.execute(select(Token, User).join(User).where(Token.token_sha256 == digest)).first()
    # The lookup is by hash of a 256-bit secret, so timing reveals nothing useful; compare anyway.
    if found is None or not hmac.compare_digest(found[0].token_sha256, digest):
        raise AuthError("auth.invalid_token", "the bearer token is not valid")
    row, user = found
    now = utcnow()
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        raise AuthError("auth.invalid_token", "the bearer token is revoked or expired")
    if not user.active:
        raise AuthError("auth.invalid_token", "the user is disabled")
    return Principal(user.id, user.name, user.role, user.site)
