"""``mmclinic db|users|tokens|audit|serve|worker``: database, accounts, audit check, API server, inference worker."""

from __future__ import annotations

import importlib
import os
import signal
import socket
import threading
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mmclinic.cli import app

if TYPE_CHECKING:  # pragma: no cover
    from sqlalchemy import Engine

    from mmclinic.store.worker import Engine as InferenceProtocol

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
users_app = typer.Typer(help="API users.", no_args_is_help=True)
tokens_app = typer.Typer(help="API bearer tokens.", no_args_is_help=True)
audit_app = typer.Typer(help="Audit trail.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")
app.add_typer(audit_app, name="audit")


def _engine() -> Engine:
    from mmclinic.config import get_settings
    from mmclinic.store.db import create_db_engine

    return create_db_engine(get_settings().effective_database_url)


def _cli_actor() -> Any:
    from mmclinic.store.audit import Actor

    return Actor(name=f"cli:{os.environ.get('USER', 'unknown')}", role="system", site="*", client="cli")


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Option(help="Target revision.")] = "head") -> None:
    """Create or migrate the schema (embedded SQLite by default, or MMCLINIC_DATABASE_URL)."""
    from mmclinic.store.db import current_revision, upgrade

    engine = _engine()
    upgrade(engine, revision)
    typer.echo(f"database at revision {current_revision(engine)}")


@db_app.command("current")
def db_current() -> None:
    """Print the applied schema revision."""
    from mmclinic.store.db import current_revision

    typer.echo(current_revision(_engine()) or "empty")


@users_app.command("add")
def users_add(
    name: str,
    role: Annotated[str, typer.Option(help="clinician | integration | admin")],
    site: Annotated[str, typer.Option(help="Site the user belongs to.")],
    label: Annotated[str, typer.Option(help="Label of the first token.")] = "initial",
) -> None:
    """Create a user and print its first token (shown only now; only a hash is stored)."""
    from mmclinic.store import audit, users
    from mmclinic.store.db import session_factory, transaction

    with transaction(session_factory(_engine())) as s:
        user = users.create_user(s, name, role, site)
        tok, secret = users.issue_token(s, user, label)
        audit.record(s, _cli_actor(), "user.create", f"user/{user.name}")
        audit.record(s, _cli_actor(), "token.create", f"token/{tok.id}")
    typer.echo(f"user {name} ({role}, site {site}) created; token id {tok.id}:")
    typer.echo(secret)


@users_app.command("list")
def users_list() -> None:
    """List users (never tokens)."""
    from sqlalchemy import select

    from mmclinic.store.db import session_factory
    from mmclinic.store.models import User

    with session_factory(_engine())() as s:
        for u in s.scalars(select(User).order_by(User.id)):
            typer.echo(f"{u.id}\t{u.name}\t{u.role}\t{u.site}\t{'active' if u.active else 'disabled'}")


@tokens_app.command("issue")
def tokens_issue(
    name: str,
    label: Annotated[str, typer.Option()] = "",
    expires_days: Annotated[int | None, typer.Option(min=1)] = None,
) -> None:
    """Issue another token for a user and print it once."""
    from datetime import timedelta

    from mmclinic.store import audit, users
    from mmclinic.store.db import session_factory, transaction
    from mmclinic.store.models import utcnow

    with transaction(session_factory(_engine())) as s:
        user = users.get_user(s, name)
        expires = utcnow() + timedelta(days=expires_days) if expires_days else None
        tok, secret = users.issue_token(s, user, label, expires)
        audit.record(s, _cli_actor(), "token.create", f"token/{tok.id}")
    typer.echo(f"token id {tok.id}:")
    typer.echo(secret)


@tokens_app.command("list")
def tokens_list(name: str) -> None:
    """List a user's tokens: id, prefix, label, state."""
    from sqlalchemy import select

    from mmclinic.store import users
    from mmclinic.store.db import session_factory
    from mmclinic.store.models import Token

    with session_factory(_engine())() as s:
        user = users.get_user(s, name)
        for t in s.scalars(select(Token).where(Token.user_id == user.id).order_by(Token.id)):
            state = "revoked" if t.revoked_at else "active"
            typer.echo(f"{t.id}\t{t.prefix}…\t{t.label}\t{state}")


@tokens_app.command("revoke")
def tokens_revoke(token_id: int) -> None:
    """Revoke a token by id."""
    from mmclinic.store import audit, users
    from mmclinic.store.db import session_factory, transaction

    with transaction(session_factory(_engine())) as s:
        users.revoke_token(s, token_id)
        audit.record(s, _cli_actor(), "token.revoke", f"token/{token_id}")
    typer.echo(f"token {token_id} revoked")


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the audit hash chain; exit 1 if an event was edited or deleted."""
    from mmclinic.store import audit
    from mmclinic.store.db import session_factory

    with session_factory(_engine())() as s:
        res = audit.verify(s)
    if res.ok:
        typer.echo(f"audit chain ok: {res.events} events")
        return
    typer.echo(
        f"audit chain BROKEN at event {res.first_bad_seq}: {res.problem} ({res.events} events verified)", err=True
    )
    raise typer.Exit(1)


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: settings api.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: settings api.port).")] = None,
) -> None:
    """Run the internal HTTP API (refuses a non-loopback address when authentication is disabled)."""
    import uvicorn

    from mmclinic.api import check_bind, create_app
    from mmclinic.config import get_settings

    settings = get_settings()
    host = host or settings.api.host
    check_bind(host, settings.api.auth_enabled)
    uvicorn.run(create_app(settings), host=host, port=port or settings.api.port, log_level="warning", access_log=False)


def _load_engine(factory: str | None) -> InferenceProtocol:
    from mmclinic.config import get_settings
    from mmclinic.errors import ConfigError, PluginError

    if factory:
        mod_name, _, attr = factory.partition(":")
        try:
            obj = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError("config.engine_factory", f"cannot import {factory}") from exc
        return obj()  # type: ignore[no-any-return]
    settings = get_settings()
    try:
        from mmclinic.engine import InferenceEngine  # type: ignore[attr-defined, unused-ignore]
    except ImportError as exc:
        raise PluginError("plugin.engine_missing", "mmclinic.engine is not available") from exc
    return InferenceEngine.load(model=settings.model, device=settings.device)  # type: ignore[no-any-return, unused-ignore]


@app.command("worker")
def worker(
    engine_factory: Annotated[
        str | None, typer.Option(help="module:callable returning an engine (default: mmclinic.engine).")
    ] = None,
    lease_seconds: Annotated[float, typer.Option(min=0.5)] = 60.0,
    poll_seconds: Annotated[float, typer.Option(min=0.01)] = 1.0,
    backoff_seconds: Annotated[float, typer.Option(min=0.0)] = 5.0,
    until_idle: Annotated[bool, typer.Option(help="Exit when no job is left.")] = False,
    max_jobs: Annotated[int | None, typer.Option(min=1)] = None,
    worker_id: Annotated[str | None, typer.Option(help="Default: host:pid.")] = None,
) -> None:
    """Claim queued jobs and run inference until stopped (SIGTERM/SIGINT finish the current job first)."""
    from mmclinic.config import get_settings
    from mmclinic.store.db import session_factory
    from mmclinic.store.worker import run_worker

    engine = _load_engine(engine_factory)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    wid = worker_id or f"{socket.gethostname()}:{os.getpid()}"
    settings = get_settings()
    stats = run_worker(
        session_factory(_engine()),
        engine,
        wid,
        lease_s=lease_seconds,
        poll_s=poll_seconds,
        backoff_s=backoff_seconds,
        models=(settings.model,),
        stop=stop,
        max_jobs=max_jobs,
        until_idle=until_idle,
    )
    typer.echo(f"worker {wid}: done {stats.done}, failed {stats.failed}, retried {stats.retried}, lost {stats.lost}")
