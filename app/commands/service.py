"""`appraise db upgrade`, `appraise keys create|list|revoke`, `appraise serve`: running the service.

Light at import (no torch, numpy or the web stack): each command imports what it uses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from app.commands.common import UsageProblem, stderr


def db_upgrade(revision: str = typer.Argument("head", help="Target revision (default: the latest)")) -> None:
    """Create or migrate the database schema (APPRAISE_DATABASE_URL) to the latest revision."""
    from app.config import get_settings
    from app.db.migrate import upgrade

    url = get_settings().database_url
    upgrade(url, revision)
    stderr.print(f"database at revision {revision}: {_safe(url)}")


@contextmanager
def _service_session() -> Iterator:
    """A transaction on the service's database (schema checked current); service errors become one line."""
    from app.config import get_settings
    from app.db.migrate import SchemaNotCurrent, check_current
    from app.db.session import make_engine, session_factory, transaction
    from app.services.errors import ServiceError

    engine = make_engine(get_settings().database_url)
    try:
        check_current(engine)
        # the write lock first (SQLite): a read then a write fails at once when a running server's worker
        # committed in between; BEGIN IMMEDIATE waits its busy time-out instead
        with transaction(session_factory(engine), immediate=True) as session:
            yield session
    except (SchemaNotCurrent, ServiceError) as exc:
        raise UsageProblem(str(exc)) from exc
    finally:
        engine.dispose()


def keys_create(
    org: str = typer.Option(..., "--org", help="Organization name (created if new)"),
    role: str = typer.Option(..., "--role", help="buyer | seller | admin"),
    name: str | None = typer.Option(None, "--name", help="A label for the key"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object"),
) -> None:
    """Create an API key (shown once: only its hash is stored). Run on the server host: this is also how the
    first admin key is made — the service has no built-in key."""
    from app.services.keys import create_key, get_or_create_org

    with _service_session() as session:
        organization = get_or_create_org(session, org, role)
        row, key = create_key(session, organization, name)
        out = {"key": key, "key_id": row.id, "prefix": row.prefix, "org": organization.name,
               "org_id": organization.id, "role": organization.role}
    if as_json:
        typer.echo(json.dumps(out))
    else:
        typer.echo(key)
        stderr.print(f"API key for {out['org']} ({out['role']}); shown once, store it now")


def keys_list(
    org: str | None = typer.Option(None, "--org", help="Only this organization's keys"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object"),
) -> None:
    """List API keys: prefix, organization, role, name, created, last used, revoked (never the secrets)."""
    from app.services.keys import list_keys

    with _service_session() as session:
        rows = [{"prefix": k.prefix, "org": o.name, "role": o.role, "name": k.name,
                 "created_at": k.created_at.isoformat(),
                 "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
                 "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None}
                for k, o in list_keys(session, org)]
    if as_json:
        typer.echo(json.dumps({"items": rows}))
        return
    from rich.table import Table

    from app.commands.common import stdout

    table = Table(title=f"API keys{f' of {org}' if org else ''}")
    for column in ("prefix", "org", "role", "name", "created", "last used", "revoked"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["prefix"], r["org"], r["role"], r["name"] or "", r["created_at"][:19],
                      (r["last_used_at"] or "never")[:19], (r["revoked_at"] or "")[:19])
    stdout.print(table)


def keys_revoke(
    prefix: str = typer.Argument(..., help="The key's prefix (the part after apr_, or the whole key)"),
) -> None:
    """Revoke an API key (running API processes stop accepting it within APPRAISE_AUTH_CACHE_SECONDS)."""
    from app.services.keys import revoke_key

    with _service_session() as session:
        row = revoke_key(session, prefix)
        stderr.print(f"revoked key {row.prefix} at {row.revoked_at:%Y-%m-%d %H:%M:%S} UTC")


def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on"),
    port: int = typer.Option(8000, help="Port"),
    migrate: bool = typer.Option(False, "--migrate", help="Run `db upgrade` first"),
    workers: int | None = typer.Option(None, "--workers", min=1,
                                       help="API processes (default APPRAISE_API_WORKERS; more than 1 needs "
                                            "APPRAISE_WORKER_MODE=external)"),
) -> None:
    """Run the REST API (and, with APPRAISE_WORKER_MODE=embedded, the default, a worker in-process)."""
    import uvicorn
    from sqlalchemy import func, select

    from app.api.observability import configure_logging
    from app.config import get_settings
    from app.db.migrate import SchemaNotCurrent, check_current, upgrade
    from app.db.models import ApiKey
    from app.db.session import make_engine
    from app.http.server import server_limits

    configure_logging()
    settings = get_settings()
    workers = workers or settings.api_workers
    if workers > 1 and settings.worker_mode == "embedded":
        raise UsageProblem(f"{workers} API processes would run {workers} embedded workers: set "
                           "APPRAISE_WORKER_MODE=external and run `appraise worker` beside them (or serve with one "
                           "API process)")
    if migrate:
        upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        check_current(engine)
        with engine.connect() as conn:
            has_keys = conn.execute(select(func.count()).select_from(ApiKey)).scalar_one() > 0
    except SchemaNotCurrent as exc:
        raise UsageProblem(str(exc)) from exc
    finally:
        engine.dispose()
    stderr.print(f"Appraise API on http://{host}:{port} (docs: http://{host}:{port}/docs; database "
                 f"{_safe(settings.database_url)}; worker {settings.worker_mode}; "
                 f"{workers} API process{'es' if workers > 1 else ''})")
    if not has_keys:
        stderr.print("No API keys yet. Create the first one (shown once) in another shell:\n"
                     "    appraise keys create --org YOUR-ORG --role admin")
    # by import path, so that each worker process builds its own app (from the same environment); uvloop and
    # httptools where installed (uvicorn[standard]): the choices bench/service.py measures
    uvicorn.run("app.api.main:served_app", factory=True, workers=workers, host=host, port=port, loop="auto",
                log_level="info", access_log=False,  # ours has request ids
                **server_limits(settings))


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def users_create(
    org: str = typer.Option(..., "--org", help="Organization name (created if new)"),
    role: str = typer.Option(..., "--role", help="buyer | seller | admin (the organization's role)"),
    email: str = typer.Option(..., "--email", help="The user's email (their sign-in name)"),
    admin: bool = typer.Option(False, "--admin", help="Manages the organization's API keys (its first user does)"),
) -> None:
    """Create a portal user. The password is read from standard input (one line), or prompted for on a
    terminal."""
    import sys

    from app.services.users import create_user

    if sys.stdin.isatty():
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\n")
    with _service_session() as session:
        user = create_user(session, org_name=org, role=role, email=email, password=password, admin=admin)
        stderr.print(f"user {user.email} of {org} ({role}){' — an admin' if user.is_admin else ''}; sign in at "
                     "/portal/")
