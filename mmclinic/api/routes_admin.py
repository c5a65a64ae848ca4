"""Admin endpoints: users, tokens, audit query (admin role only)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, status
from sqlalchemy import select

from mmclinic.api.deps import Caller, caller
from mmclinic.api.problems import responses
from mmclinic.api.schemas import MAX_ID, AuditEventOut, AuditPage, Id, TokenCreated, TokenIn, TokenOut, UserIn, UserOut
from mmclinic.errors import NotFoundError
from mmclinic.store import audit, users
from mmclinic.store.models import AuditEvent, Token, User, utcnow

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])
ADMIN = ("admin",)


def _user_out(u: User) -> UserOut:
    return UserOut(id=u.id, name=u.name, role=u.role, site=u.site, active=u.active, created_at=u.created_at)


def _token_out(t: Token, user: str) -> TokenOut:
    return TokenOut(
        id=t.id,
        user=user,
        prefix=t.prefix,
        label=t.label,
        created_at=t.created_at,
        expires_at=t.expires_at,
        revoked_at=t.revoked_at,
    )


@router.get("/users", response_model=list[UserOut], responses=responses(401, 403), summary="List users")
def list_users(who: Caller = Depends(caller)) -> list[UserOut]:
    with who.audited("user.list", "users", ADMIN) as tx:
        return [_user_out(u) for u in tx.session.scalars(select(User).order_by(User.id))]


@router.post(
    "/users",
    status_code=status.HTTP_201_CREATED,
    response_model=UserOut,
    responses=responses(400, 401, 403, 409, 422),
    summary="Create a user",
)
def create_user(body: UserIn, who: Caller = Depends(caller)) -> UserOut:
    with who.audited("user.create", f"user/{body.name}", ADMIN) as tx:
        return _user_out(users.create_user(tx.session, body.name, body.role, body.site))


@router.get(
    "/users/{user_id}/tokens",
    response_model=list[TokenOut],
    responses=responses(401, 403, 404, 422),
    summary="List a user's tokens (never the secrets)",
)
def list_tokens(user_id: Id, who: Caller = Depends(caller)) -> list[TokenOut]:
    with who.audited("token.list", f"user/{user_id}/tokens", ADMIN) as tx:
        user = tx.session.get(User, user_id)
        if user is None:
            raise NotFoundError("not_found.user", "no such user")
        rows = tx.session.scalars(select(Token).where(Token.user_id == user_id).order_by(Token.id))
        return [_token_out(t, user.name) for t in rows]


@router.post(
    "/users/{user_id}/tokens",
    status_code=status.HTTP_201_CREATED,
    response_model=TokenCreated,
    responses=responses(401, 403, 404, 422),
    summary="Issue a token (the secret is shown once)",
)
def create_token(user_id: Id, body: TokenIn, who: Caller = Depends(caller)) -> TokenCreated:
    with who.audited("token.create", f"user/{user_id}/tokens", ADMIN) as tx:
        user = tx.session.get(User, user_id)
        if user is None:
            raise NotFoundError("not_found.user", "no such user")
        expires = utcnow() + timedelta(days=body.expires_in_days) if body.expires_in_days else None
        row, secret = users.issue_token(tx.session, user, body.label, expires)
        tx.resource = f"token/{row.id}"
        return TokenCreated(token=secret, **_token_out(row, user.name).model_dump())


@router.delete(
    "/tokens/{token_id}", response_model=TokenOut, responses=responses(401, 403, 404, 422), summary="Revoke a token"
)
def revoke_token(token_id: Id, who: Caller = Depends(caller)) -> TokenOut:
    with who.audited("token.revoke", f"token/{token_id}", ADMIN) as tx:
        row = users.revoke_token(tx.session, token_id)
        return _token_out(row, row.user.name)


@router.get("/audit", response_model=AuditPage, responses=responses(401, 403, 422), summary="Query audit events")
def query_audit(
    who: Caller = Depends(caller),
    actor: Annotated[str | None, Query(max_length=128)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    resource: Annotated[str | None, Query(max_length=256)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after_seq: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    with who.audited("audit.read", "audit", ADMIN) as tx:

        def utc(ts: datetime | None) -> datetime | None:
            return None if ts is None else (ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts)

        rows: list[AuditEvent] = list(
            tx.session.scalars(audit.query(actor, action, resource, utc(since), utc(until), after_seq, limit + 1))
        )
        more = len(rows) > limit
        rows = rows[:limit]
        items = [
            AuditEventOut(
                seq=e.seq,
                occurred_at=e.occurred_at,
                actor=e.actor,
                role=e.role,
                site=e.site,
                action=e.action,
                resource=e.resource,
                outcome=e.outcome,
                client=e.client,
                hash=e.hash,
            )
            for e in rows
        ]
        return AuditPage(items=items, next_after_seq=rows[-1].seq if more and rows else None)
