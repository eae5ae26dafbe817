"""The Python client of the REST API (sync, httpx): datasets, listings, methods, jobs and their values, batches.

    from app.client import AppraiseClient

    with AppraiseClient("http://127.0.0.1:8000", key="apr_...") as api:
        ds = api.upload_dataset("valid.csv", name="valid")
        job = api.submit_job("knn-shapley", ds.id, [seller_id], {"k": 5})
        job = api.wait_job(job.id)

Every method returns a typed object (:mod:`app.client.models`) or raises a :class:`~app.client.errors.ClientError`
(an :class:`~app.client.errors.ApiError` carries the server's problem+json). Reads are retried on a dropped
connection (a server restarting); writes are not, except those sent with an ``Idempotency-Key``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from app.client.errors import ApiError, ClientError, ConnectionFailed, error_class
from app.client.models import (
    Batch,
    Dataset,
    Delivery,
    Event,
    Job,
    Listing,
    Method,
    Page,
    PointValue,
    ValuePage,
    WhoAmI,
)

if TYPE_CHECKING:
    from app.client.resumable import Transfers

DEFAULT_URL = "http://127.0.0.1:8000"
API_PREFIX = "/api/v1"
#: attempts of a read (or an idempotent write) when the connection fails
READ_ATTEMPTS = 4
# A 503 (busy database, full pool) is retried this many times after the server's Retry-After (at most
# MAX_BUSY_WAIT_S each), whatever the method: the server answers 503 only when it changed nothing.
BUSY_RETRIES = 3
MAX_BUSY_WAIT_S = 10.0


class AppraiseClient:
    """One server, one API key. ``url`` defaults to ``$APPRAISE_URL`` then ``http://127.0.0.1:8000``; ``key``
    to ``$APPRAISE_API_KEY``."""

    def __init__(self, url: str | None = None, key: str | None = None, *, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = (url or os.environ.get("APPRAISE_URL") or DEFAULT_URL).rstrip("/")
        key = key if key is not None else os.environ.get("APPRAISE_API_KEY")
        headers = {"User-Agent": "appraise-client", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key.strip()}"
        self._http = httpx.Client(base_url=self.url + API_PREFIX, headers=headers, timeout=timeout,
                                  transport=transport, trust_env=False)
        self._auth = {"Authorization": headers["Authorization"]} if key else {}
        self._key_hash = hashlib.sha256(key.strip().encode()).hexdigest() if key else ""

    def __enter__(self) -> AppraiseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:  # never the key
        return f"AppraiseClient({self.url!r})"

    # --- transport -------------------------------------------------------------------------------------------

    def transfers(self) -> Transfers:
        """Resumable file transfers to this server with this key (tus; see :mod:`app.client.resumable`)."""
        from app.client.resumable import Transfers  # tuspy and requests load only when a file is sent

        return Transfers(self.url, self._auth, self._key_hash)

    def request(self, method: str, path: str, *, retry: bool | None = None, **kwargs: Any) -> httpx.Response:
        """One request; an error status becomes an :class:`ApiError`, a failed connection a
        :class:`ConnectionFailed` (after retries for reads)."""
        attempts = READ_ATTEMPTS if (retry if retry is not None else method == "GET") else 1
        busy_retries = BUSY_RETRIES
        attempt = 0
        while attempt < attempts:
            attempt += 1
            try:
                response = self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                if attempt < attempts:
                    time.sleep(0.25 * 2 ** (attempt - 1))
                    continue
                raise ConnectionFailed(f"cannot reach {self.url}: {_reason(exc)}") from None
            except httpx.TimeoutException:
                raise ConnectionFailed(f"{self.url} did not answer {method} {path} in time") from None
            except httpx.HTTPError as exc:
                raise ConnectionFailed(f"{method} {self.url}{API_PREFIX}{path}: {_reason(exc)}") from None
            if response.status_code == 503 and busy_retries > 0 and "files" not in kwargs:
                # the server did nothing (its transaction rolled back): a busy database or a full pool
                busy_retries -= 1
                attempt -= 1  # a busy answer does not use up the attempts a failed connection gets
                time.sleep(_retry_after(response))
                continue
            if response.status_code >= 400:
                raise problem_of(response, method, path)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ClientError(f"{method} {path}: the server's answer is not JSON") from None

    # --- who ---------------------------------------------------------------------------------------------------

    def whoami(self) -> WhoAmI:
        return WhoAmI.model_validate(self._json("GET", "/whoami"))

    # --- methods -----------------------------------------------------------------------------------------------

    def list_methods(self) -> list[Method]:
        return [Method.model_validate(m) for m in self._json("GET", "/methods")["items"]]

    # --- datasets ----------------------------------------------------------------------------------------------

    def upload_dataset(self, path: str | Path, *, name: str, kind: str = "table", label_column: str | None = None,
                       edges: str | Path | None = None, progress: Callable[[int, int], None] | None = None) -> Dataset:
        """Upload a file (and a graph's edges.csv) as a new dataset; ``progress(sent, total)`` as bytes go out.
        :func:`app.client.uploads.ensure_dataset` first looks for the same file already uploaded."""
        from app.client.uploads import upload

        return upload(self, Path(path), name=name, kind=kind, label_column=label_column,
                      edges=Path(edges) if edges else None, progress=progress)

    def find_datasets(self, sha256: str) -> list[Dataset]:
        """The caller's datasets whose file has this SHA-256."""
        return [Dataset.model_validate(d)
                for d in self._json("GET", "/datasets", params={"sha256": sha256, "limit": 500})["items"]]

    def list_datasets(self, *, limit: int = 50, offset: int = 0) -> Page[Dataset]:
        return Page[Dataset].model_validate(self._json("GET", "/datasets", params={"limit": limit,
                                                                                    "offset": offset}))

    def iter_datasets(self) -> Iterator[Dataset]:
        yield from self._pages(self.list_datasets)

    def get_dataset(self, dataset_id: str) -> Dataset:
        return Dataset.model_validate(self._json("GET", f"/datasets/{_seg(dataset_id)}"))

    def delete_dataset(self, dataset_id: str) -> None:
        self.request("DELETE", f"/datasets/{_seg(dataset_id)}")

    # --- listings ----------------------------------------------------------------------------------------------

    def create_listing(self, dataset_id: str, buyers: list[str] | None = None) -> Listing:
        body: dict[str, Any] = {"dataset_id": dataset_id}
        if buyers is not None:
            body["buyers"] = list(buyers)
        return Listing.model_validate(self._json("POST", "/listings", json=body))

    def list_listings(self, *, limit: int = 50, offset: int = 0) -> Page[Listing]:
        return Page[Listing].model_validate(self._json("GET", "/listings", params={"limit": limit,
                                                                                    "offset": offset}))

    def iter_listings(self) -> Iterator[Listing]:
        yield from self._pages(self.list_listings)

    def get_listing(self, listing_id: str) -> Listing:
        return Listing.model_validate(self._json("GET", f"/listings/{_seg(listing_id)}"))

    def delete_listing(self, listing_id: str) -> None:
        self.request("DELETE", f"/listings/{_seg(listing_id)}")

    # --- jobs --------------------------------------------------------------------------------------------------

    def submit_job(self, method: str, buyer_dataset_id: str, seller_dataset_ids: list[str],
                   params: dict[str, Any] | None = None, *, idempotency_key: str | None = None) -> Job:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = {"method": method, "buyer_dataset_id": buyer_dataset_id,
                "seller_dataset_ids": list(seller_dataset_ids), "params": params or {}}
        return Job.model_validate(self._json("POST", "/jobs", json=body, headers=headers,
                                             retry=idempotency_key is not None))

    def get_job(self, job_id: str) -> Job:
        return Job.model_validate(self._json("GET", f"/jobs/{_seg(job_id)}"))

    def list_jobs(self, *, status: str | None = None, limit: int = 50, offset: int = 0) -> Page[Job]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        return Page[Job].model_validate(self._json("GET", "/jobs", params=params))

    def cancel_job(self, job_id: str) -> Job:
        return Job.model_validate(self._json("POST", f"/jobs/{_seg(job_id)}/cancel"))

    def wait_job(self, job_id: str, *, timeout: float | None = None, poll: float = 0.5) -> Job:
        """Poll until the job ends (``timeout``: :class:`ClientError` past it)."""
        t0 = time.monotonic()
        while True:
            job = self.get_job(job_id)
            if job.finished:
                return job
            if timeout is not None and time.monotonic() - t0 > timeout:
                raise ClientError(f"job {job_id} is still {job.status} after {timeout:g} s")
            time.sleep(poll)

    def job_values(self, job_id: str, *, dataset_id: str | None = None, order: str = "index", limit: int = 1000,
                   offset: int = 0) -> ValuePage:
        """One page of the per-point values the caller may see (its own points)."""
        params: dict[str, Any] = {"order": order, "limit": limit, "offset": offset}
        if dataset_id:
            params["dataset_id"] = dataset_id
        return ValuePage.model_validate(self._json("GET", f"/jobs/{_seg(job_id)}/values", params=params))

    def iter_job_values(self, job_id: str, *, dataset_id: str | None = None,
                        order: str = "index") -> Iterator[PointValue]:
        offset = 0
        while True:
            page = self.job_values(job_id, dataset_id=dataset_id, order=order, limit=1000, offset=offset)
            yield from page.items
            offset += len(page.items)
            if not page.items or offset >= page.total:
                return

    def job_events(self, job_id: str, *, last_event_id: int | None = None) -> Iterator[Event]:
        yield from self._events(f"/jobs/{_seg(job_id)}/events", last_event_id)

    # --- batches -----------------------------------------------------------------------------------------------

    def create_batch(self, name: str, jobs: list[dict[str, Any]], *, webhook: dict[str, Any] | None = None,
                     idempotency_key: str | None = None) -> tuple[Batch, bool]:
        """``POST /batches``: ``(batch, created)``; ``created`` is False when the ``Idempotency-Key`` was used
        before with the same batch (nothing new was made)."""
        body: dict[str, Any] = {"name": name, "jobs": jobs}
        if webhook is not None:
            body["webhook"] = webhook
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = self.request("POST", "/batches", json=body, headers=headers, retry=idempotency_key is not None)
        return Batch.model_validate(response.json()), response.headers.get("Idempotency-Replayed") != "true"

    def get_batch(self, batch_id: str) -> Batch:
        return Batch.model_validate(self._json("GET", f"/batches/{_seg(batch_id)}"))

    def list_batches(self, *, limit: int = 50, offset: int = 0) -> Page[Batch]:
        return Page[Batch].model_validate(self._json("GET", "/batches", params={"limit": limit, "offset": offset}))

    def iter_batches(self) -> Iterator[Batch]:
        yield from self._pages(self.list_batches)

    def cancel_batch(self, batch_id: str) -> Batch:
        return Batch.model_validate(self._json("POST", f"/batches/{_seg(batch_id)}/cancel"))

    def batch_deliveries(self, batch_id: str) -> list[Delivery]:
        return [Delivery.model_validate(d)
                for d in self._json("GET", f"/batches/{_seg(batch_id)}/webhook-deliveries")["items"]]

    def batch_events(self, batch_id: str, *, last_event_id: int | None = None) -> Iterator[Event]:
        """The batch's Server-Sent Events until its last job ends (the final one is a ``batch`` event with
        ``final`` true)."""
        yield from self._events(f"/batches/{_seg(batch_id)}/events", last_event_id)

    def wait_batch(self, batch_id: str, *, on_update: Callable[[Batch], None] | None = None,
                   timeout: float | None = None, poll: float = 0.5) -> Batch:
        """Poll ``GET /batches/{id}`` until every job ended, calling ``on_update`` with each answer."""
        t0 = time.monotonic()
        while True:
            batch = self.get_batch(batch_id)
            if on_update is not None:
                on_update(batch)
            if batch.finished:
                return batch
            if timeout is not None and time.monotonic() - t0 > timeout:
                raise ClientError(f"batch {batch_id} is still {batch.status} after {timeout:g} s")
            time.sleep(poll)

    # --- helpers -----------------------------------------------------------------------------------------------

    @staticmethod
    def _pages(fetch: Callable[..., Page]) -> Iterator[Any]:
        offset = 0
        while True:
            page = fetch(limit=500, offset=offset)
            yield from page.items
            offset += len(page.items)
            if not page.items or offset >= page.total:
                return

    def _events(self, path: str, last_event_id: int | None) -> Iterator[Event]:
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        try:
            with self._http.stream("GET", path, headers=headers, timeout=httpx.Timeout(60.0, read=None)) as r:
                if r.status_code >= 400:
                    r.read()
                    raise problem_of(r, "GET", path)
                yield from parse_sse(r.iter_lines())
        except httpx.HTTPError as exc:
            raise ConnectionFailed(f"the event stream {path} broke: {_reason(exc)}") from None


def parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    """Server-Sent Events from the stream's lines (comments and keep-alives skipped; ``data`` parsed as JSON)."""
    fields: dict[str, str] = {}
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                try:
                    payload = json.loads("\n".join(data))
                except ValueError:
                    payload = {"text": "\n".join(data)}
                event_id = fields.get("id")
                yield Event(id=int(event_id) if event_id and event_id.isdigit() else None,
                            event=fields.get("event", "message"), data=payload if isinstance(payload, dict) else
                            {"value": payload})
            fields, data = {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        else:
            fields[name] = value


def problem_of(response: httpx.Response, method: str, path: str) -> ApiError:
    """The :class:`ApiError` of an error response (problem+json, or whatever body came)."""
    status = response.status_code
    body: dict[str, Any] = {}
    try:
        parsed = response.json()
        if isinstance(parsed, dict):
            body = parsed
    except ValueError:
        pass
    extra = {k: v for k, v in body.items() if k not in ("type", "title", "status", "detail", "instance")}
    retry_after = response.headers.get("Retry-After") or str(extra.pop("retry_after", "") or "")
    extra.pop("retry_after", None)
    detail = body.get("detail")
    if detail is None and not body:
        text = response.text.strip().splitlines()
        detail = text[0][:300] if text else None
    return error_class(status)(status, str(body.get("title") or response.reason_phrase or "Error"),
                               str(detail) if detail is not None else None, type_=str(body.get("type", "about:blank")),
                               instance=body.get("instance"), method=method, url=path,
                               retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
                               **extra)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    for known in ("Connection refused", "Name or service not known", "No route to host", "timed out"):
        if known.lower() in text.lower():
            return known.lower()
    return text.splitlines()[0][:200]


def _seg(value: str) -> str:
    """A path segment (an id the user typed): refuse anything that would change the path."""
    if not value or any(c in value for c in "/?#%\\") or value in (".", ".."):
        raise ClientError(f"not an id: {value!r}")
    return value


__all__ = ["DEFAULT_URL", "AppraiseClient", "ApiError", "parse_sse", "problem_of"]


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(max(float(response.headers.get("retry-after", "1")), 0.1), MAX_BUSY_WAIT_S)
    except ValueError:
        return 1.0
