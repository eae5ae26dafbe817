"""A job's event stream (Server-Sent Events): its ``progress`` and ``state`` events replayed after an id, then new
ones as they are written, until the job ends (a final ``state`` event says how). The API's ``/jobs/{id}/events``
and the portal's live progress both serve it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool

from app.services import jobs as service

EVENTS_POLL_SECONDS = 0.5
EVENTS_KEEPALIVE_SECONDS = 15.0


def sse(data: dict[str, Any], *, event: str, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, default=str, separators=(',', ':'))}\n\n".encode()


def _fetch(factory, job_id: str, after: int) -> tuple[str, float, list[service.Event]]:
    with factory() as session:
        return service.events_after(session, job_id, after)


async def job_events(factory, job_id: str, after: int, poll: float) -> AsyncIterator[bytes]:
    yield b": stream of job events\nretry: 2000\n\n"
    quiet_since = time.monotonic()
    while True:
        status, progress, events = await run_in_threadpool(_fetch, factory, job_id, after)
        for e in events:
            yield sse({"job_id": job_id, "kind": e.kind, "created_at": e.created_at.isoformat(), "data": e.data},
                       event=e.kind, event_id=e.id)
            after = e.id
        if events:
            quiet_since = time.monotonic()
            if len(events) >= 500:
                continue  # more to replay before looking at the state again
        if service.is_finished(status):
            yield sse({"job_id": job_id, "kind": "state", "final": True, "data": {"status": status,
                                                                                   "progress": progress}},
                       event="state")
            return
        if time.monotonic() - quiet_since > EVENTS_KEEPALIVE_SECONDS:
            quiet_since = time.monotonic()
            yield b": keep-alive\n\n"
        await asyncio.sleep(poll)

