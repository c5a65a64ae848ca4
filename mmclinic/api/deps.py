"""Request plumbing: app state, bearer-token callers, and one audited transaction per request."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mmclinic.config import Settings
from mmclinic.errors import AuthError, ForbiddenError, MmclinicError
from mmclinic.store import audit
from mmclinic.store.users import Principal, authenticate

ALL_ROLES = ("clinician", "integration", "admin")
ModelCheck = Callable[[], tuple[bool, str]]


@dataclass
class ApiState:
    """Everything handlers need, built once by ``create_app``."""

    settings: Settings
    engine: Engine
    factory: sessionmaker[Session]
    data_dir: Path
    model: str
    model_check: ModelCheck


def api_state(request: Request) -> ApiState:
    st = request.app.state.mmclinic
    assert isinstance(st, ApiState)
    return st


bearer = HTTPBearer(auto_error=False, description="A token made by `mmclinic users add` or the admin API.")


@dataclass
class Tx:
    """The open transaction of a request, its authenticated principal and the audited resource name."""

    session: Session
    principal: Principal
    resource: str

    def site_filter(self) -> str | None:
        """``None`` for callers that see every site, else the only site they may see."""
        return None if self.principal.is_admin else self.principal.site


class Caller:
    """One request's caller; authentication happens inside the request's single transaction."""

    def __init__(self, st: ApiState, token: str | None, client: str) -> None:
        self.st, self._token, self.client = st, token, client

    def _principal(self, session: Session) -> Principal:
        if not self.st.settings.api.auth_enabled:
            return Principal(None, "dev", "admin", "default")
        if not self._token:
            raise AuthError("auth.missing_token", "a bearer token is required")
        return authenticate(session, self._token)

    def _actor(self, p: Principal) -> audit.Actor:
        return audit.Actor(p.name, p.role, p.site, self.client)

    @contextmanager
    def audited(self, action: str, resource: str, roles: tuple[str, ...] = ALL_ROLES) -> Iterator[Tx]:
        """Authenticate, authorise by role, run the body, and append one audit event with the outcome.

        Success: the event commits with the body's writes. Failure: the body rolls back and the
        event is written on its own, with the error's reason code as the outcome.
        """
        principal: Principal | None = None
        tx: Tx | None = None
        with self.st.factory() as s:
            try:
                with s.begin():
                    principal = self._principal(s)
                    tx = Tx(s, principal, resource)
                    if principal.role not in roles:
                        raise ForbiddenError("auth.role_forbidden", f"the {principal.role} role may not do this")
                    yield tx
                    audit.record(s, self._actor(principal), action, tx.resource, "ok")
            except AuthError:
                raise  # nobody to attribute it to
            except BaseException as exc:
                if principal is not None:
                    outcome = exc.reason if isinstance(exc, MmclinicError) else "internal"
                    with s.begin():
                        audit.record(s, self._actor(principal), action, tx.resource if tx else resource, outcome)
                raise


def caller(request: Request, cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
    """The request's caller (``Depends``)."""
    client = request.client.host if request.client else ""
    return Caller(api_state(request), cred.credentials if cred else None, client)
