"""The FastAPI application: state, routers, problem+json error handlers, and the bind-address safety rule."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from sqlalchemy import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmclinic import __version__
from mmclinic.api import problems
from mmclinic.api.deps import ApiState, ModelCheck
from mmclinic.config import Settings, get_settings
from mmclinic.errors import ConfigError, MmclinicError
from mmclinic.store.db import create_db_engine, session_factory


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, auth_enabled: bool) -> None:
    """Refuse to serve without authentication anywhere but loopback."""
    if not auth_enabled and not is_loopback(host):
        raise ConfigError(
            "config.auth_disabled_non_loopback",
            f"authentication is disabled; refusing to listen on non-loopback address {host}",
        )


def registry_model_check(model: str) -> ModelCheck:
    """Readiness of the model: its task plugin validated and its weights file exists."""

    def check() -> tuple[bool, str]:
        from mmclinic.registry import get_registry

        try:
            task = get_registry().get("task", model)
            weights = getattr(task, "weights_path", lambda: None)()
        except MmclinicError as exc:
            return False, exc.reason
        if weights is None or not Path(weights).is_file():
            return False, "model.weights_missing"
        return True, "ok"

    return check


def create_app(
    settings: Settings | None = None, engine: Engine | None = None, model_check: ModelCheck | None = None
) -> FastAPI:
    """Build the app. Tests pass their own engine and model check; ``serve`` uses the settings."""
    settings = settings or get_settings()
    engine = engine or create_db_engine(settings.effective_database_url)
    app = FastAPI(
        title="mmclinic internal API",
        version=__version__,
        description="Cases, jobs, predictions, reviews and audit for the mmclinic diagnosis service.",
    )
    app.state.mmclinic = ApiState(
        settings=settings,
        engine=engine,
        factory=session_factory(engine),
        data_dir=settings.data_dir,
        model=settings.model,
        model_check=model_check or registry_model_check(settings.model),
    )
    app.add_exception_handler(MmclinicError, problems.mmclinic_error_handler)
    app.add_exception_handler(RequestValidationError, problems.validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, problems.http_error_handler)
    app.add_exception_handler(Exception, problems.unhandled_error_handler)

    from mmclinic.api import routes_admin, routes_cases, routes_meta, routes_predictions, routes_sr

    for module in (routes_meta, routes_cases, routes_predictions, routes_sr, routes_admin):
        app.include_router(module.router)

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        # The error responses reference #/components/schemas/Problem; make sure it is defined.
        schema = base_openapi()
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        comps.setdefault("Problem", problems.Problem.model_json_schema(ref_template="#/components/schemas/{model}"))
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
