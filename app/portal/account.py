"""Sign-in, sign-out, the home page, changing one's password, and an organization's API keys."""

from __future__ import annotations

import asyncio
import secrets

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from app.db.models import Dataset, Job, Listing, Organization
from app.db.session import begin_write
from app.http.deps import SESSION_COOKIE, SessionDep
from app.http.validation import check_form
from app.portal.web import FORM_MAX_BYTES, PageFormDep, ViewerDep, current_viewer, page, policy, redirect
from app.services import keys as keys_service
from app.services import users
from app.services.errors import Forbidden, Invalid

router = APIRouter()

#: before sign-in there is no session: the sign-in form is protected by a double-submit token instead
SIGN_IN_COOKIE = "appraise_signin"


def _secure(request: Request) -> bool:
    mode = request.app.state.settings.cookie_secure
    if mode != "auto":
        return mode == "always"
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https"


def _sign_in_form(request: Request, *, email: str = "", error: str | None = None, status_code: int = 200,
                  next_path: str | None = None) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = page(request, "sign_in.html", None, status_code=status_code, email=email, error=error,
                    csrf=token, next_path=next_path or "")
    response.set_cookie(SIGN_IN_COOKIE, token, httponly=True, samesite="lax", secure=_secure(request),
                        path="/portal", max_age=3600)
    return response


def _safe_next(path: str | None) -> str:
    return path if path and path.startswith("/portal/") and not path.startswith("//") else "/portal/"


@router.get("/", response_class=HTMLResponse)
def home(request: Request, session: SessionDep, next: str | None = None) -> HTMLResponse:
    viewer = current_viewer(request, session)
    if viewer is None:
        return _sign_in_form(request, next_path=next)
    org = viewer.caller.org_id
    counts = {
        "datasets": session.scalar(select(func.count()).select_from(Dataset).where(Dataset.org_id == org)) or 0,
        "listings": session.scalar(select(func.count()).select_from(Listing).where(Listing.org_id == org)) or 0,
        "jobs": session.scalar(select(func.count()).select_from(Job).where(
            Job.org_id == org, Job.method != "dataset-profile")) or 0,
    }
    return page(request, "home.html", viewer, counts=counts)


def _sign_in(session, email: str, password: str, sessions_policy) -> tuple[str | None, users.SignInRefused | None]:
    """The sign-in's queries (in the threadpool): a new session's token, or why it was refused (the failure is
    committed: it counts towards the lockout)."""
    begin_write(session)
    try:
        user = users.sign_in(session, email, password, sessions_policy)
    except users.SignInRefused as exc:
        session.commit()
        return None, exc
    token = users.open_session(session, user, sessions_policy)
    session.commit()
    return token, None


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(request: Request, session: SessionDep) -> Response:
    if len(await request.body()) > FORM_MAX_BYTES:
        raise Forbidden("the form is too large")
    form = await request.form()
    check_form(form)
    email, password = str(form.get("email") or ""), str(form.get("password") or "")
    next_path = str(form.get("next") or "")
    token = request.cookies.get(SIGN_IN_COOKIE)
    if not token or not secrets.compare_digest(token, str(form.get("csrf_token") or "")):
        return _sign_in_form(request, email=email, status_code=400, next_path=next_path,
                             error="The form expired; please sign in again.")
    session_token, refused = await run_in_threadpool(_sign_in, session, email, password, policy(request))
    if refused is not None:
        await asyncio.sleep(refused.wait)  # slowed down, without holding a thread
        return _sign_in_form(request, email=email, status_code=401,
                             error=refused.detail[0].upper() + refused.detail[1:] + ".", next_path=next_path)
    response = redirect(_safe_next(next_path))
    response.set_cookie(SESSION_COOKIE, session_token, httponly=True, samesite="lax", secure=_secure(request),
                        path="/", max_age=int(policy(request).lifetime.total_seconds()))
    response.delete_cookie(SIGN_IN_COOKIE, path="/portal")
    return response


@router.post("/sign-out")
def sign_out(request: Request, session: SessionDep, viewer: ViewerDep, _form: PageFormDep) -> Response:
    begin_write(session)
    users.close_session(session, viewer.token)
    response = redirect("/portal/", signed_out=1)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/password", response_class=HTMLResponse)
def password_form(request: Request, viewer: ViewerDep, done: int | None = None) -> HTMLResponse:
    return page(request, "password.html", viewer, done=done)


@router.post("/password", response_class=HTMLResponse)
def change_password(request: Request, session: SessionDep, viewer: ViewerDep, form: PageFormDep) -> Response:
    new, again = form.get("new_password", ""), form.get("repeat_password", "")
    errors = {}
    if new != again:
        errors["repeat_password"] = "the two new passwords differ"
    else:
        begin_write(session)
        user = session.merge(viewer.signed.user)
        try:
            users.change_password(session, user, form.get("current_password", ""), new)
            users.close_other_sessions(session, user, viewer.signed.session_id)
            session.commit()
            return redirect("/portal/password", done=1)
        except Invalid as exc:
            errors[exc.extra.get("field", "new_password")] = exc.detail.split(": ", 1)[-1]
    return page(request, "password.html", viewer, status_code=422, errors=errors)


# --- API keys (an organization's admins) -----------------------------------------------------------------------


def _keys_page(request: Request, session, viewer, *, new_key: str | None = None, errors=None,
               status_code: int = 200) -> HTMLResponse:
    keys = keys_service.org_keys(session, viewer.caller.org_id)
    return page(request, "keys.html", viewer, keys=keys, new_key=new_key, errors=errors or {},
                status_code=status_code)


@router.get("/keys", response_class=HTMLResponse)
def keys_page(request: Request, session: SessionDep, viewer: ViewerDep) -> HTMLResponse:
    users.require_org_admin(viewer.signed.user)
    return _keys_page(request, session, viewer)


@router.post("/keys", response_class=HTMLResponse)
def create_key(request: Request, session: SessionDep, viewer: ViewerDep, form: PageFormDep) -> HTMLResponse:
    users.require_org_admin(viewer.signed.user)
    name = form.get("name", "").strip() or None
    if name and len(name) > 200:
        return _keys_page(request, session, viewer, errors={"name": "at most 200 characters"}, status_code=422)
    begin_write(session)
    org = session.get(Organization, viewer.caller.org_id)
    _, key = keys_service.create_key(session, org, name)
    session.commit()
    return _keys_page(request, session, viewer, new_key=key, status_code=201)


@router.post("/keys/{key_id}/revoke")
def revoke_key(key_id: str, request: Request, session: SessionDep, viewer: ViewerDep, _form: PageFormDep) -> Response:
    users.require_org_admin(viewer.signed.user)
    begin_write(session)
    keys_service.revoke_org_key(session, viewer.caller.org_id, key_id)
    session.commit()
    request.app.state.auth_cache.forget_key(key_id)
    return redirect("/portal/keys", revoked=key_id)
