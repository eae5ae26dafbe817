"""The portal's live progress (progress.js) on a page of its own: the job's event stream is played by the test, so
the moment the job ends is chosen, not raced. A job that ends while the user follows a link does not pull them back;
a page that is still shown when the job ends reloads to show the result."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ORIGIN = "http://appraise.test"
PAGE = """<!doctype html><title>job</title>
<section data-job="j1" data-status="{status}"><progress max="100"></progress><p aria-live="polite"></p></section>
<a href="/there">Elsewhere</a> <a href="/nothing">Nowhere</a>
<script src="/progress.js"></script>"""
FINAL = 'event: state\ndata: {"kind": "state", "final": true, "data": {"status": "succeeded"}}\n\n'


@pytest.fixture
def page(browser):
    page = browser.new_page()
    script = (ROOT / "app/portal/static/progress.js").read_text()
    page.route(f"{ORIGIN}/progress.js", lambda r: r.fulfill(content_type="text/javascript", body=script))
    yield page
    page.close()


def _serve_page(page, loads: list[int]) -> None:
    """The job page: running when first shown, succeeded once reloaded (as the portal's pages are)."""
    def here(route):
        loads.append(1)
        route.fulfill(content_type="text/html", body=PAGE.format(status="running" if len(loads) == 1 else "succeeded"))
    page.route(f"{ORIGIN}/here", here)


def _play_events(page, job_ended) -> None:
    """Each connection of the event stream ends at once and reconnects in 100 ms; it says the job ended once
    ``job_ended()`` is true."""
    def events(route):
        body = "retry: 100\n\n" + (FINAL if job_ended() else "")
        route.fulfill(status=200, content_type="text/event-stream", body=body)
    page.route(f"{ORIGIN}/portal/jobs/j1/events", events)


def test_a_job_ending_during_a_click_on_a_link_does_not_bring_the_user_back(page):
    held = []  # the navigation to /there, answered only after the job has ended
    loads: list[int] = []
    _serve_page(page, loads)
    _play_events(page, lambda: bool(held))
    page.route(f"{ORIGIN}/there", lambda route: held.append(route))

    page.goto(f"{ORIGIN}/here")
    page.get_by_role("link", name="Elsewhere").click(no_wait_after=True)  # the test answers it later
    page.wait_for_timeout(1500)  # the stream reconnects and says the job ended while the navigation waits
    assert held, "the click did not start a navigation"
    held[0].fulfill(content_type="text/html", body="<!doctype html><title>there</title><h1>There</h1>")
    page.get_by_role("heading", name="There").wait_for(timeout=5000)
    assert page.url == f"{ORIGIN}/there"
    assert len(loads) == 1  # the job page was never reloaded


def test_a_page_still_shown_when_the_job_ends_reloads_to_show_the_result(page):
    loads: list[int] = []
    _serve_page(page, loads)
    clicked = []
    _play_events(page, lambda: bool(clicked))
    page.route(f"{ORIGIN}/nothing", lambda r: (clicked.append(1), r.fulfill(status=204))[1])

    page.goto(f"{ORIGIN}/here")
    page.get_by_role("link", name="Nowhere").click()  # a navigation that leaves the page where it is
    for _ in range(100):  # the page waits 15 s for a navigation that may still come, then reloads
        if len(loads) == 2:
            break
        page.wait_for_timeout(250)
    assert clicked and len(loads) == 2, "the page did not reload once the job ended"
