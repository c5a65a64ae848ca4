"""API test kit: the real app on a migrated database, users of two sites, a worker (shared by tests/api)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from _support import enter_test_database
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mmclinic.api import create_app
from mmclinic.config import ApiSettings, Settings
from mmclinic.store import db as dbmod
from mmclinic.store import users
from mmclinic.store.testing import FakeEngine
from mmclinic.store.worker import run_worker

USERS = {
    "admin": ("admin", "s1"),
    "clin1": ("clinician", "s1"),
    "clin2": ("clinician", "s2"),
    "int1": ("integration", "s1"),
    "int2": ("integration", "s2"),
}


@dataclass
class Api:
    client: TestClient
    engine: Engine
    factory: sessionmaker[Session]
    data_dir: Path
    tokens: dict[str, str] = field(default_factory=dict)
    backend: str = "sqlite"

    def h(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def run_jobs(self, engine: FakeEngine | None = None) -> None:
        run_worker(self.factory, engine or FakeEngine(), "test-worker", poll_s=0.01, backoff_s=0.0, until_idle=True)

    def submit(self, user: str = "int1", note: str = "mass in right upper lobe", **extra: object) -> dict:
        body = {"patient_id": extra.pop("patient_id", "p-001"), "notes": [{"text": note}], "tabular": {"age": 61}}
        body.update(extra)
        r = self.client.post("/api/v1/cases", json=body, headers=self.h(user))
        assert r.status_code == 202, r.text
        return r.json()

    def predicted(self, user: str = "int1", note: str = "mass", **extra: object) -> int:
        """Submit, run the worker, return the prediction id."""
        job = self.submit(user, note, **extra)
        self.run_jobs()
        r = self.client.get(f"/api/v1/jobs/{job['job_id']}", headers=self.h(user))
        assert r.json()["state"] == "done", r.text
        return int(r.json()["prediction_id"])


def build_api(backend: str, tmp_path: Path, auth: bool = True) -> Iterator[Api]:
    ctx, url = enter_test_database(backend, tmp_path)
    engine = dbmod.create_db_engine(url)
    try:
        dbmod.upgrade(engine)
        factory = dbmod.session_factory(engine)
        tokens = {}
        with dbmod.transaction(factory) as s:
            for name, (role, site) in USERS.items():
                tokens[name] = users.issue_token(s, users.create_user(s, name, role, site))[1]
        settings = Settings(data_dir=tmp_path / "data", database_url=url, api=ApiSettings(auth_enabled=auth))
        app = create_app(settings, engine=engine, model_check=lambda: (True, "ok"))
        with TestClient(app, raise_server_exceptions=False) as client:
            yield Api(client, engine, factory, tmp_path / "data", tokens, backend)
    finally:
        engine.dispose()
        ctx.__exit__(None, None, None)
