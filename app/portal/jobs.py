"""Live progress of the signed-in organization's jobs (a dataset's profile, a valuation): the job's event stream
(Server-Sent Events) for the page's script."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from app.http.deps import SessionDep
from app.http.events import EVENTS_POLL_SECONDS, job_events
from app.portal.web import PortalNotFound, ViewerDep
from app.services import jobs as service
from app.services.errors import NotFound

router = APIRouter()


@router.get("/jobs/{job_id}/events")
def events(job_id: str, request: Request, session: SessionDep, viewer: ViewerDep) -> StreamingResponse:
    try:
        job = service.get_job(session, viewer.caller, job_id)
    except NotFound:
        raise PortalNotFound() from None
    factory = request.app.state.sessions
    poll = min(EVENTS_POLL_SECONDS, request.app.state.settings.poll_seconds)
    return StreamingResponse(job_events(factory, job.id, 0, poll), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
