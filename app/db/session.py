"""Engines and sessions for the service's database (SQLite file by default, Postgres in production).

SQLite runs with WAL, foreign keys on and a busy timeout; a session asks for an *immediate* transaction (the
write lock taken at BEGIN, SQLite's stand-in for ``FOR UPDATE SKIP LOCKED``) with
``session.connection(execution_options={"sqlite_immediate": True})`` as its first statement.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def pool_options(size: int, overflow: int, timeout: float) -> dict:
    """``create_engine`` options of a bounded pool: ``size`` kept, ``overflow`` more under load, and a checkout
    that waits at most ``timeout`` seconds (then ``sqlalchemy.exc.TimeoutError``: the API answers 503)."""
    return {"pool_size": size, "max_overflow": overflow, "pool_timeout": timeout}


#: a pooled connection unused for longer than this is pinged when it is next checked out (a server restarted, or a
#: firewall that dropped it, while it sat in the pool); a busy pool's connections are not
PING_AFTER_IDLE_SECONDS = 5.0


def make_engine(url: str, **kwargs) -> Engine:
    if not is_sqlite(url):
        engine = create_engine(url, **kwargs)
        _ping_idle_connections(engine)
        return engine
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    else:  # an in-memory database lives in one connection: no pool to size
        kwargs = {k: v for k, v in kwargs.items() if k not in ("pool_size", "max_overflow", "pool_timeout")}
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below), so BEGIN IMMEDIATE is possible
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("sqlite_immediate") else "BEGIN")

    return engine


def _ping_idle_connections(engine: Engine) -> None:
    """``pool_pre_ping`` for connections that sat idle: SQLAlchemy's pings every checkout, a round trip to the
    database per request (per query, on the polled read) that a connection given back milliseconds ago does not
    need. A dead connection found here is replaced at once (``DisconnectionError``: the pool connects anew); one
    that dies while in use fails that request (a 503 with Retry-After) and has the pool drop the connections of
    the same age, as with ``pool_pre_ping``."""

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_conn, record) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_conn, record, _proxy) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since <= PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, this connection is not to be used
            raise DisconnectionError(f"a pooled connection failed its ping: {exc}") from exc


def begin_write(session: Session) -> None:
    """Before a request's writes: on SQLite, end the read transaction (authentication) and take the write lock
    (``BEGIN IMMEDIATE``) before reading what the write depends on. A deferred SQLite transaction that read and
    then writes after another connection (a worker) committed fails at once with "database is locked" (its
    snapshot is stale; the busy timeout does not apply). Postgres: nothing to do."""
    if session.get_bind().dialect.name != "sqlite":
        return
    session.commit()
    session.connection(execution_options={"sqlite_immediate": True})


def read_connection(engine: Engine) -> Connection:
    """A pooled connection for one read-only statement (use it as a context manager: it goes back to the pool at
    the end). On Postgres it runs in autocommit mode: a single statement reads one consistent snapshot without a
    transaction, which saves the ``BEGIN`` and ``ROLLBACK`` round trips. SQLite keeps its usual (local, cheap)
    deferred transaction."""
    conn = engine.connect()
    if engine.dialect.name == "postgresql":
        conn.execution_options(isolation_level="AUTOCOMMIT")
    return conn


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session], *, immediate: bool = False) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with factory() as session:
        if immediate and session.get_bind().dialect.name == "sqlite":
            session.connection(execution_options={"sqlite_immediate": True})
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
