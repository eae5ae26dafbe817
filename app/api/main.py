"""The FastAPI application: routers under ``/api/v1``, problem+json errors, health at the root.

``create_app(settings)`` builds one app around one database; it refuses to start (lifespan) on a database whose
schema is not at the migrations' head, and with ``worker_mode = embedded`` it runs the worker loop in-process.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

from app import __version__
from app.api import health, observability, problems
from app.config import Settings, get_settings
from app.db.migrate import check_current
from app.db.session import make_engine, pool_options, session_factory
from app.http.guard import RequestGuard
from app.http.validation import reject_unsafe_input
from app.services.keys import AuthCache

log = logging.getLogger("appraise.api")

API_PREFIX = "/api/v1"
STATIC = Path(__file__).resolve().parents[1] / "static"


def _operation_id(route: APIRoute) -> str:
    return route.name


def _sweep_temp_files(app: FastAPI) -> None:
    """Start-up: remove what a crash mid-upload left in the blob store's temporary folder."""
    from app.db.session import transaction
    from app.services.resumable import sweep_leftovers
    from app.storage import BlobStore

    settings = app.state.settings
    try:
        with transaction(app.state.sessions) as session:
            removed = sweep_leftovers(session, BlobStore(settings.storage_dir), settings.temp_max_age_seconds)
    except Exception:  # noqa: BLE001 - a failed sweep must not stop the service; the next start tries again
        log.warning("could not sweep temporary upload files", exc_info=True)
        return
    if removed:
        log.info("removed %d leftover temporary upload files", len(removed))


def create_app(settings: Settings | None = None, *, check_schema: bool = True) -> FastAPI:
    settings = settings or get_settings()
    engine = make_engine(settings.database_url, **pool_options(
        settings.db_pool_size, settings.db_max_overflow, settings.db_pool_timeout_seconds))

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
        docs_url=None,
        redoc_url=None,
        # NUL bytes and integers past 64 bits are a 422 on every route, the same on SQLite and Postgres
        dependencies=[Depends(reject_unsafe_input)],
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = session_factory(engine)
    app.state.auth_cache = AuthCache(ttl=settings.auth_cache_seconds)
    app.state.on_start = [_sweep_temp_files]
    app.state.on_stop = []
    if settings.worker_mode == "embedded":
        from app.worker.supervisor import start_embedded, stop_embedded

        app.state.on_start.append(start_embedded)
        app.state.on_stop.append(stop_embedded)
    if settings.webhook_dispatcher:
        from app.services.webhooks import start_dispatcher, stop_dispatcher

        app.state.on_start.append(start_dispatcher)
        app.state.on_stop.append(stop_dispatcher)
    app.state.metrics = observability.Metrics(app.state.sessions)
    # outermost last: request id and security headers on everything (500s included), then CORS (preflights
    # answered before authentication), then the guard (authentication and body caps before any body is read),
    # then the polled job read's short way
    from app.api.jobs import PolledJobRead

    app.add_middleware(PolledJobRead)  # inside the guard: GET /jobs/{id} once its key is checked
    app.add_middleware(RequestGuard, settings=settings)
    if settings.cors_origins():
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins(),
                           allow_credentials=settings.cors_allow_credentials,
                           allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID", "X-CSRF-Token",
                                          "Idempotency-Key", "Tus-Resumable", "Upload-Length", "Upload-Offset",
                                          "Upload-Metadata"],
                           expose_headers=["Location", "Retry-After", "X-Request-ID", "Upload-Offset",
                                           "Upload-Length", "Tus-Resumable"],
                           max_age=600)
    app.add_middleware(observability.RequestContext, metrics=app.state.metrics)
    problems.install(app)
    from app.api import jobs

    # The jobs routes are matched first: FastAPI tries routes in order, and GET /jobs/{id} (the route clients
    # poll) would otherwise wait behind some thirty others. No other route shares their paths. The OpenAPI
    # document keeps the order below (_offline_docs).
    app.include_router(jobs.router, prefix=API_PREFIX)
    app.include_router(health.router)
    app.include_router(observability.router)
    for router in _api_routers():
        if router is not jobs.router:
            app.include_router(router, prefix=API_PREFIX)
    _offline_docs(app, settings)
    from app import portal

    portal.install(app)
    return app


def served_app() -> FastAPI:
    """The app of ``appraise serve`` (uvicorn's factory, in each of its worker processes): logs as the CLI's do,
    settings from the environment."""
    observability.configure_logging()
    return create_app()


def _api_routers() -> list:
    """The resource routers (each domain adds its own here)."""
    from app.api import batches, datasets, jobs, keys, listings, me, methods, resumable, shares

    return [me.router, methods.router, datasets.router, resumable.router, listings.router, jobs.router,
            shares.router, batches.router, keys.router]


def _documented_order(routes: list) -> list:
    """The app's routes in the order the OpenAPI document lists them: the jobs routes (matched first) where
    :func:`_api_routers` has them, before the router that follows them there."""
    from app.api import jobs

    routers = _api_routers()
    after = routers[routers.index(jobs.router) + 1]
    jobs_routes = [r for r in routes if getattr(r, "original_router", None) is jobs.router]
    out = []
    for r in routes:
        if getattr(r, "original_router", None) is after:
            out.extend(jobs_routes)
        if not any(r is j for j in jobs_routes):
            out.append(r)
    return out


def _offline_docs(app: FastAPI, settings: Settings) -> None:
    """``/openapi.json`` with every method's params, and ``/docs`` (Swagger UI) and ``/redoc`` from assets served
    by this app (no CDN: they work on a machine without internet)."""
    from app.api.methods import document_job_bodies

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=_documented_order(app.routes))
            app.openapi_schema = problems.document_errors(document_job_bodies(schema, settings.caps()))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} API",
                                   swagger_js_url="/static/docs/swagger-ui-bundle.js",
                                   swagger_css_url="/static/docs/swagger-ui.css",
                                   swagger_favicon_url="/static/docs/favicon-32x32.png")

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} API",
                              redoc_js_url="/static/docs/redoc.standalone.js",
                              redoc_favicon_url="/static/docs/favicon-32x32.png", with_google_fonts=False)
