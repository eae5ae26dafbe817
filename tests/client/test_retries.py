"""The client retries a 503 (a busy database or a full pool: the server changed nothing) after its Retry-After, a
bounded number of times and for any method; other errors, 429 included, are not retried."""

from __future__ import annotations

import httpx
import pytest

from app.client import client as client_module
from app.client.client import AppraiseClient
from app.client.errors import ApiError


def _client(answers: list[int], calls: list[str]) -> AppraiseClient:
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        status = answers[min(len(calls) - 1, len(answers) - 1)]
        if status == 200:
            return httpx.Response(200, json={"ok": True})
        return httpx.Response(status, headers={"retry-after": "0", "content-type": "application/problem+json"},
                              json={"status": status, "title": "busy", "detail": "try again"})

    api = AppraiseClient("http://appraise.test", "apr_0123456789ab_secret")
    api._http = httpx.Client(base_url="http://appraise.test/api/v1", transport=httpx.MockTransport(handler))
    return api


def test_a_503_is_retried_after_its_retry_after_then_succeeds():
    calls: list[str] = []
    assert _client([503, 503, 200], calls).request("POST", "/jobs", json={}).json() == {"ok": True}
    assert calls == ["POST"] * 3


def test_retries_are_bounded():
    calls: list[str] = []
    with pytest.raises(ApiError) as info:
        _client([503], calls).request("POST", "/jobs", json={})
    assert info.value.status == 503 and len(calls) == client_module.BUSY_RETRIES + 1


def test_a_429_is_not_retried():
    calls: list[str] = []
    with pytest.raises(ApiError) as info:
        _client([429, 200], calls).request("POST", "/batches", json={})
    assert info.value.status == 429 and calls == ["POST"]
