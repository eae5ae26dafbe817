"""What every portal page shares: the templates, the signed-in user, CSRF on every form, and the page helpers.

Pages are rendered on the server (Jinja2) and read without JavaScript; scripts only add uploads with progress
and live job progress. A form's errors are shown next to the field they concern (``errors[field]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from app import __version__
from app.db.session import transaction
from app.http.deps import SESSION_COOKIE
from app.http.validation import check_form
from app.services.errors import Forbidden, ServiceError
from app.services.keys import Caller
from app.services.users import SessionPolicy, SignedIn, csrf_ok, csrf_token, session_user

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.globals["version"] = __version__
templates.env.globals["format"] = format  # numbers as the method declares them (".4f")
FORM_MAX_BYTES = 64 * 1024  # a page's form (the dataset upload streams, it is not a page form)


class SignInNeeded(Exception):
    """No (valid) session: the page answers with the sign-in form (a redirect to /portal/)."""


class PortalNotFound(Exception):
    """A page of something that does not exist, or is another organization's: 404, the same page either way."""


@dataclass(frozen=True)
class Viewer:
    """The signed-in user of a page request: their organization (as a service caller) and form token."""

    signed: SignedIn
    token: str

    @property
    def caller(self) -> Caller:
        return self.signed.caller

    @property
    def csrf(self) -> str:
        return csrf_token(self.token)

    @property
    def role(self) -> str:
        return self.signed.org.role

    def can(self, *roles: str) -> bool:
        return self.role == "admin" or self.role in roles


def policy(request: Request) -> SessionPolicy:
    return SessionPolicy.from_settings(request.app.state.settings)


def current_viewer(request: Request, session: Session) -> Viewer | None:
    token = request.cookies.get(SESSION_COOKIE)
    signed = session_user(session, token, policy(request)) if token else None
    return Viewer(signed, token) if signed else None  # type: ignore[arg-type]


def require_viewer(request: Request) -> Viewer:
    """The signed-in user, looked up with a short session of its own (committed at once), so a page that then
    streams an upload holds no database connection meanwhile."""
    with transaction(request.app.state.sessions) as session:
        viewer = current_viewer(request, session)
    if viewer is None:
        raise SignInNeeded()
    request.state.caller = viewer.caller
    return viewer


ViewerDep = Annotated[Viewer, Depends(require_viewer)]


async def checked_form(request: Request, viewer: Viewer) -> dict[str, str]:
    """A page form's fields (``application/x-www-form-urlencoded``, small), after its CSRF token is checked."""
    body = await request.body()
    if len(body) > FORM_MAX_BYTES:
        raise Forbidden("the form is too large")
    form = await request.form()
    check_form(form)
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if not csrf_ok(viewer.token, fields.get("csrf_token")):
        raise Forbidden("the form's security token is missing or out of date; reload the page and try again")
    return fields


async def page_form(request: Request, viewer: ViewerDep) -> dict[str, str]:
    """A page form's fields, read and CSRF-checked *before* the page's handler, which can then be a plain ``def``
    whose queries run in the threadpool (never on the event loop)."""
    return await checked_form(request, viewer)


PageFormDep = Annotated[dict[str, str], Depends(page_form)]


async def page_form_data(request: Request, _checked: PageFormDep) -> FormData:
    """The same form with its repeated fields (checkboxes), for a handler that needs ``getlist``; checked once
    (FastAPI runs :func:`page_form` once per request however many parameters ask for it)."""
    return await request.form()  # parsed once: Starlette keeps it


PageFormDataDep = Annotated[FormData, Depends(page_form_data)]


def page(request: Request, template: str, viewer: Viewer | None, status_code: int = 200,
         **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, template, {"viewer": viewer, "errors": {}, **context},
                                      status_code=status_code)


def redirect(path: str, **query: Any) -> RedirectResponse:
    qs = urlencode({k: v for k, v in query.items() if v is not None})
    return RedirectResponse(f"{path}?{qs}" if qs else path, status_code=303)


def field_errors(exc: ServiceError, default_field: str) -> dict[str, str]:
    """A service error as ``{field: message}`` for the form (its field, or ``default_field``)."""
    field = exc.extra.get("field") or default_field
    return {str(field).split(".")[-1]: exc.detail}
