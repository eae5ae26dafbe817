"""The FastAPI application: routers under ``/api/v1``, problem+json errors, health at the root.

``create_app(settings)`` builds one app around one database; it refuses to start (lifespan) on a database whose
schema is not at the migrations' head, and with ``worker_mode = embedded`` it runs the worker loop in-process.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute

from app import __version__
from app.api import health, observability, problems
from app.config import Settings, get_settings
from app.db.migrate import check_current
from app.db.session import make_engine, session_factory
from app.services.keys import AuthCache

API_PREFIX = "/api/v1"


def _operation_id(route: APIRoute) -> str:
    return route.name


def create_app(settings: Settings | None = None, *, check_schema: bool = True) -> FastAPI:
    settings = settings or get_settings()
    engine = make_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if check_schema:
            check_current(engine)
        for start in app.state.on_start:
            start(app)
        try:
            yield
        finally:
            for stop in app.state.on_stop:
                stop(app)
            engine.dispose()

    app = FastAPI(
        title="Appraise",
        version=__version__,
        description="What a seller's data is worth to a buyer, before raw data changes hands.",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = session_factory(engine)
    app.state.auth_cache = AuthCache(ttl=settings.auth_cache_seconds)
    app.state.on_start = []
    app.state.on_stop = []
    if settings.worker_mode == "embedded":
        from app.worker.loop import start_embedded, stop_embedded

        app.state.on_start.append(start_embedded)
        app.state.on_stop.append(stop_embedded)
    app.state.metrics = observability.Metrics(app.state.sessions)
    app.add_middleware(observability.RequestContext, metrics=app.state.metrics)
    problems.install(app)
    app.include_router(health.router)
    app.include_router(observability.router)
    for router in _api_routers():
        app.include_router(router, prefix=API_PREFIX)
    return app


def _api_routers() -> list:
    """The resource routers (each domain adds its own here)."""
    from app.api import datasets, jobs, listings, me, shares

    return [me.router, datasets.router, listings.router, jobs.router, shares.router]
