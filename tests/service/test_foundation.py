"""Service foundation: migrations on both databases, start-up refusal, health, keys, auth and problem+json."""

from __future__ import annotations

import json
import time

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select

from app.db.migrate import SchemaNotCurrent, check_current, downgrade, head_revision, upgrade
from app.db.models import ApiKey, Base
from app.db.session import make_engine, session_factory

PROBLEM = "application/problem+json"


def test_migrations_match_the_models(db_url):
    """The one migration chain builds exactly the tables the models declare (on SQLite and Postgres)."""
    engine = make_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_upgrade_from_empty_and_downgrade_to_empty(tmp_path, request):
    for kind in ("sqlite", "postgres"):
        if kind == "sqlite":
            url = f"sqlite:///{tmp_path / 'fresh.db'}"
        else:
            url = request.getfixturevalue("pg_url")
            downgrade(url)  # the session database starts migrated: take it down first
        engine = make_engine(url)
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(url)
        check_current(engine)
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
        downgrade(url)
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        with pytest.raises(SchemaNotCurrent, match="appraise db upgrade"):
            check_current(engine)
        upgrade(url)
        engine.dispose()


def test_service_refuses_an_unmigrated_database(tmp_path):
    from fastapi.testclient import TestClient

    from app.api.main import create_app
    from app.config import Settings

    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'empty.db'}", storage_dir=tmp_path / "s"))
    expected = "has no Appraise schema: run `appraise db upgrade` first"
    with pytest.raises(SchemaNotCurrent, match=expected), TestClient(app):
        pass


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready"}


def test_keys_are_stored_hashed_and_authenticate(client, make_org, settings):
    org = make_org("acme", "buyer")
    assert org.key.startswith("apr_")
    engine = make_engine(settings.database_url)
    with session_factory(engine)() as s:
        rows = s.scalars(select(ApiKey)).all()
    engine.dispose()
    assert len(rows) == 1 and org.key not in json.dumps([r.key_hash for r in rows] + [r.prefix for r in rows])
    assert rows[0].key_hash != org.key and len(rows[0].key_hash) == 64


@pytest.mark.parametrize("header", [None, "Bearer nope", "Bearer apr_abc_def", "Basic abc", "Bearer "])
def test_unauthorized_is_problem_json(client, header, make_org):
    make_org("acme", "buyer")
    headers = {"Authorization": header} if header is not None else {}
    r = client.get("/api/v1/whoami", headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == 401 and body["title"] == "Unauthorized" and "API key" in body["detail"]


def test_whoami_and_unknown_route(client, make_org):
    org = make_org("acme", "seller")
    r = client.get("/api/v1/whoami", headers=org.headers)
    assert r.status_code == 200 and r.json() == {"org_id": org.id, "org": "acme", "role": "seller"}
    r = client.get("/api/v1/nothing-here", headers=org.headers)
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM


def test_keys_create_cli(tmp_path, monkeypatch, capsys):
    from app.cli import main
    from app.config import get_settings

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("APPRAISE_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as exc:  # not migrated yet: a clear message, exit 2
            main(["keys", "create", "--org", "acme", "--role", "admin", "--json"])
        assert exc.value.code == 2
        assert "appraise db upgrade" in capsys.readouterr().err
        main(["db", "upgrade"])
        main(["keys", "create", "--org", "acme", "--role", "admin", "--json"])
        out = json.loads(capsys.readouterr().out)
        assert out["key"].startswith("apr_") and out["role"] == "admin" and out["org"] == "acme"
        with pytest.raises(SystemExit) as exc:  # same name, other role: refused
            main(["keys", "create", "--org", "acme", "--role", "buyer"])
        assert exc.value.code == 2
    finally:
        get_settings.cache_clear()
    assert head_revision() is not None


def test_revoked_keys_stop_authenticating(client, make_org, settings):
    from app.db.session import transaction
    from app.services.keys import revoke_key

    org = make_org("acme", "buyer")
    assert client.get("/api/v1/whoami", headers=org.headers).status_code == 200
    engine = make_engine(settings.database_url)
    with transaction(session_factory(engine)) as s:
        revoke_key(s, org.key)  # the whole key works as well as its prefix
    engine.dispose()
    client.app.state.auth_cache = type(client.app.state.auth_cache)(ttl=10.0)  # a new API process: empty cache
    r = client.get("/api/v1/whoami", headers=org.headers)
    assert r.status_code == 401 and r.headers["content-type"] == PROBLEM


def test_keys_revoke_cli(tmp_path, monkeypatch, capsys):
    from app.cli import main
    from app.config import get_settings

    monkeypatch.setenv("APPRAISE_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    get_settings.cache_clear()
    try:
        main(["db", "upgrade"])
        main(["keys", "create", "--org", "acme", "--role", "buyer", "--json"])
        key = json.loads(capsys.readouterr().out)["key"]
        main(["keys", "revoke", key.split("_")[1]])
        assert "revoked key" in capsys.readouterr().err
        with pytest.raises(SystemExit) as exc:
            main(["keys", "revoke", "nosuchprefix"])
        assert exc.value.code == 2 and "no API key with prefix" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()


def test_an_idle_pooled_connection_that_died_is_replaced_at_checkout(pg_url, monkeypatch):
    """Postgres connections are pinged when they come out of the pool after sitting idle (not at every checkout,
    as pool_pre_ping did): one whose server process went away meanwhile is replaced, the caller never sees it."""
    from sqlalchemy import text

    from app.db import session as db_session

    engine = make_engine(pg_url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        admin = make_engine(pg_url)
        with admin.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
        admin.dispose()
        monkeypatch.setattr(db_session, "PING_AFTER_IDLE_SECONDS", 0.0)  # it has been idle "long enough"
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid
        # used just now: no ping at checkout (a fast pool), and the connection still works
        pings = []
        monkeypatch.setattr(db_session, "PING_AFTER_IDLE_SECONDS", 3600.0)
        monkeypatch.setattr(engine.dialect, "do_ping", lambda c: pings.append(c) or True)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
        assert pings == []
    finally:
        engine.dispose()


def test_the_jobs_routes_are_matched_first_and_documented_in_their_place(app):
    from app.api import jobs

    first = next(r for r in app.router.routes if hasattr(r, "original_router"))
    assert first.original_router is jobs.router  # the polled GET /jobs/{id} is not tried after thirty others
    paths = list(app.openapi()["paths"])
    assert paths[0] == "/healthz"
    assert paths.index("/api/v1/listings") < paths.index("/api/v1/jobs") < paths.index("/api/v1/shares")


def test_a_key_revoked_through_the_api_stops_at_once_and_elsewhere_within_the_cache_ttl(client, make_org, settings):
    from app.config import Settings
    from app.db.session import transaction
    from app.services.keys import AuthCache, revoke_key

    assert Settings().auth_cache_seconds <= 2  # a revoked key stops working within about two seconds
    admin = make_org("ops", "admin")
    made = client.post("/api/v1/keys", headers=admin.headers, json={"name": "ci"}).json()
    ci = {"Authorization": f"Bearer {made['key']}"}
    assert client.get("/api/v1/whoami", headers=ci).status_code == 200  # now in this process's cache
    assert client.delete(f"/api/v1/keys/{made['id']}", headers=admin.headers).status_code == 204
    assert client.get("/api/v1/whoami", headers=ci).status_code == 401  # the process that revoked it: at once
    # revoked by another process (the CLI, another API process): this one trusts its cache for its TTL only
    client.app.state.auth_cache = AuthCache(ttl=0.5)
    assert client.get("/api/v1/whoami", headers=admin.headers).status_code == 200
    engine = make_engine(settings.database_url)
    with transaction(session_factory(engine)) as s:
        revoke_key(s, admin.key)
    engine.dispose()
    deadline = time.monotonic() + 5
    while client.get("/api/v1/whoami", headers=admin.headers).status_code == 200:
        assert time.monotonic() < deadline, "the revoked key kept working"
        time.sleep(0.05)
    assert time.monotonic() < deadline - 4  # within the TTL (0.5 s), give or take a request
