"""Service test fixtures: every test that takes ``db_url`` runs on SQLite *and* on the machine's Postgres.

Postgres: one fresh database per test session (``appraise_test_<random>``, dropped at the end), migrated once;
every test starts from empty tables (truncated after each test). Where Postgres is unreachable the Postgres
variants skip, except under ``CI=true``, where they fail: CI must test both databases.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.config import Settings
from app.db.migrate import upgrade
from app.db.models import Base
from app.db.session import make_engine, session_factory, transaction
from app.services.keys import create_key, get_or_create_org

PG_ADMIN_URL = os.environ.get("APPRAISE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _pg_available() -> str | None:
    try:
        eng = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with eng.connect() as conn:
            conn.execute(text("SELECT 1"))
        eng.dispose()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A migrated Postgres database for this session."""
    why = _pg_available()
    if why is not None:
        if IN_CI:
            pytest.fail(f"Postgres is required in CI and is unreachable at {PG_ADMIN_URL}: {why}")
        pytest.skip(f"Postgres unreachable at {PG_ADMIN_URL}: {why}")
    name = f"appraise_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> str:
    """A migrated SQLite file; each test gets a copy (fast: no migrations per test)."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    upgrade(f"sqlite:///{path}")
    return str(path)


def _truncate(url: str) -> None:
    eng = make_engine(url)
    with eng.begin() as conn:
        names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    eng.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path) -> Iterator[str]:
    """A migrated, empty database: SQLite (a copy of the template) or Postgres (truncated after the test)."""
    if request.param == "sqlite":
        import shutil

        target = tmp_path / "appraise.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), target)
        yield f"sqlite:///{target}"
        return
    url = request.getfixturevalue("pg_url")
    try:
        yield url
    finally:
        _truncate(url)


@pytest.fixture
def settings(db_url, tmp_path) -> Settings:
    return Settings(database_url=db_url, storage_dir=tmp_path / "storage", worker_mode="external",
                    max_upload_bytes=64 * 1024**2, lease_seconds=5.0, heartbeat_seconds=0.5, poll_seconds=0.05,
                    retry_backoff_seconds=0.0,
                    # tests make hundreds of unauthenticated requests from one address on purpose; the throttle
                    # of failed authentication has its own tests (test_hardening_http)
                    auth_failure_burst=100_000,
                    # tests that want the webhook dispatcher thread turn it on (some start an app's lifespan and
                    # never stop it, which would leave the thread polling a dropped database)
                    webhook_dispatcher=False)


@pytest.fixture
def app(settings):
    from app.api.main import create_app

    return create_app(settings)


@pytest.fixture
def client(app) -> Iterator:
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c


@dataclass(frozen=True)
class Org:
    name: str
    role: str
    id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture
def make_org(settings) -> Callable[..., Org]:
    """``make_org("acme", "buyer")`` → an organization with a fresh API key."""
    engine = make_engine(settings.database_url)
    factory = session_factory(engine)

    def make(name: str, role: str = "buyer") -> Org:
        # immediate: the lookup-then-insert runs beside an embedded worker that commits; a deferred SQLite
        # transaction whose snapshot went stale fails at once ("database is locked"), an immediate one waits
        with transaction(factory, immediate=True) as session:
            org = get_or_create_org(session, name, role)
            _, key = create_key(session, org)
            return Org(name=org.name, role=org.role, id=org.id, key=key)

    yield make
    engine.dispose()
