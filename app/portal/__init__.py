"""The portal: the browser face of the service (sellers upload, profile, describe and list their data and see its
demand; buyers browse the catalogue and value it). Pages are rendered by the same FastAPI app from Jinja2
templates; static assets are served locally (no CDN, no build step).

``install(app)`` mounts it at ``/portal/`` (``/`` redirects there).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from app.portal.web import HERE, PortalNotFound, SignInNeeded, current_viewer, page
from app.services.errors import ServiceError


def install(app: FastAPI) -> None:
    from app.portal import account, buyer, datasets, jobs, listings

    for module in (account, datasets, listings, buyer, jobs):
        app.include_router(module.router, prefix="/portal", include_in_schema=False)
    app.mount("/portal/static", StaticFiles(directory=HERE / "static"), name="portal-static")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/portal/", status_code=307)

    @app.exception_handler(SignInNeeded)
    async def _sign_in(request: Request, _exc: SignInNeeded) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/portal/?next={target}", status_code=303)

    problem_handler = app.exception_handlers.get(ServiceError)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> Response:
        """On portal pages a service error is a page (the API keeps its problem+json)."""
        if not request.url.path.startswith("/portal/") or request.url.path.startswith("/portal/static/"):
            return await problem_handler(request, exc)
        if request.headers.get("accept", "").startswith("application/json"):
            return await problem_handler(request, exc)
        factory = request.app.state.sessions
        with factory() as session:
            viewer = current_viewer(request, session)
        return page(request, "error.html", viewer, status_code=exc.status, title=exc.title, detail=exc.detail)

    @app.exception_handler(PortalNotFound)
    async def _not_found(request: Request, _exc: PortalNotFound) -> Response:
        factory = request.app.state.sessions
        with factory() as session:
            viewer = current_viewer(request, session)
        return page(request, "not_found.html", viewer, status_code=404)
