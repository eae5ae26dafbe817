"""Operations: request ids and structured access logs (a pure ASGI middleware), and Prometheus ``/metrics``.

Every response carries ``X-Request-ID`` (the client's, if it sent a sane one, else a fresh one); every log line of
the request carries ``request_id=...``. ``/metrics`` exposes HTTP request counts and latencies (this process) and,
read from the database at scrape time (so every worker's jobs count): jobs by state, queue depth, and the
durations of jobs finished in the last day.
"""

from __future__ import annotations

import contextvars
import hmac
import ipaddress
import logging
import re
import time
import uuid
from datetime import timedelta

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import func, select

from app.db.base import utcnow
from app.db.models import JOB_STATES, Job, JobStatus

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
access_log = logging.getLogger("appraise.access")
error_log = logging.getLogger("appraise.api")
_SANE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every log record (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def configure_logging(level: int = logging.INFO) -> None:
    """key=value lines on stderr with the request id; idempotent."""
    root = logging.getLogger("appraise")
    if any(getattr(h, "_appraise", False) for h in root.handlers):
        return
    handler = logging.StreamHandler()
    handler._appraise = True  # type: ignore[attr-defined]
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s "
                                           "request_id=%(request_id)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


class Metrics:
    """The app's own registry (one per app: tests build many apps in one process)."""

    def __init__(self, sessions) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("appraise_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("appraise_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
        self.registry.register(_JobCollector(sessions))


class _JobCollector:
    def __init__(self, sessions) -> None:
        self.sessions = sessions

    def collect(self):
        with self.sessions() as s:
            counts = dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            due = s.scalar(select(func.count()).where(Job.status == JobStatus.QUEUED, Job.not_before <= utcnow())) or 0
            since = utcnow() - timedelta(days=1)
            spans = s.execute(select(Job.started_at, Job.finished_at).where(
                Job.finished_at >= since, Job.started_at.is_not(None))).all()
        jobs = GaugeMetricFamily("appraise_jobs", "Jobs by state", labels=["state"])
        for state in JOB_STATES:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        yield GaugeMetricFamily("appraise_queue_depth", "Queued jobs ready to run", value=due)
        durations = [(f - st).total_seconds() for st, f in spans if f and st]
        buckets = [(str(b), sum(d <= b for d in durations)) for b in DURATION_BUCKETS]
        buckets.append(("+Inf", len(durations)))
        yield HistogramMetricFamily("appraise_job_duration_seconds", "Durations of jobs finished in the last day",
                                    buckets=buckets, sum_value=sum(durations))


#: the portal serves its own scripts and styles (no inline script: base.html's token is a <meta>); inline style
#: attributes are allowed (layout only, no script)
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")
#: /docs and /redoc: FastAPI's pages start Swagger UI / ReDoc with an inline script
DOCS_CSP = CSP.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'").replace(
    "img-src 'self' data:", "img-src 'self' data: blob:")
_STATIC = ("/static/", "/portal/static/")


def security_headers(path: str) -> list[tuple[bytes, bytes]]:
    """The headers every response carries; API responses and pages are never cached (static assets may be)."""
    csp = DOCS_CSP if path in ("/docs", "/redoc") else CSP
    headers = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
               (b"x-frame-options", b"DENY"), (b"content-security-policy", csp.encode())]
    if not path.startswith(_STATIC):
        headers.append((b"cache-control", b"no-store"))
    return headers


class RequestContext:
    """Pure ASGI middleware (no per-request task overhead), the outermost: request id, security headers, access
    log, request metrics, and the 500 of an unhandled error (so it, too, carries the id and the headers)."""

    def __init__(self, app, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = sent if _SANE_ID.match(sent) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        start = time.perf_counter()
        status, started = 500, False
        extra = [(b"x-request-id", rid.encode()), *security_headers(scope["path"])]

        async def send_with_id(message):
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                names = {k.lower() for k, _ in message.get("headers") or []}
                message["headers"] = [*(message.get("headers") or []), *(h for h in extra if h[0] not in names)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            error_log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not started:
                from app.api.problems import problem

                await problem(500, "Internal error", f"an unexpected error occurred; it has been logged with "
                              f"request id {rid}", instance=scope["path"])(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            if self.metrics is not None:
                self.metrics.requests.labels(scope["method"], path, str(status)).inc()
                self.metrics.latency.labels(scope["method"], path).observe(elapsed)
            access_log.info("method=%s path=%s route=%s status=%d ms=%.1f", scope["method"], scope["path"], path,
                            status, elapsed * 1000)
            request_id_var.reset(token)


router = APIRouter(tags=["health"])


def _metrics_allowed(request: Request) -> bool:
    settings = request.app.state.settings
    if settings.metrics_access == "public":
        return True
    if settings.metrics_access == "token":
        sent = request.headers.get("authorization", "")
        return bool(settings.metrics_token) and hmac.compare_digest(sent.encode(),
                                                                    f"Bearer {settings.metrics_token}".encode())
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@router.get("/metrics", operation_id="metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus text format: aggregates only (jobs by state, request counts by route template), nothing per
    organization. Readable per ``metrics_access``: from loopback (the default), with a token, or by anyone."""
    if not _metrics_allowed(request):
        from app.api.problems import problem

        return problem(403, "Forbidden", "/metrics is readable from loopback only, or with the metrics token "
                       "(APPRAISE_METRICS_ACCESS, APPRAISE_METRICS_TOKEN)", instance="/metrics")
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
