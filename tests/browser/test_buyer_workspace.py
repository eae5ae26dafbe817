"""A buyer in the browser: upload its table, find listings in the catalogue, start a relevance-diversity valuation
of two of them from the form, watch it finish, read R and D equal to the API's result next to a plot, download the
CSV; a data-shapley valuation shows its histograms and the removal curve; a cap exceeded is an error next to the
field."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.browser.conftest import nav, sign_in

pytestmark = pytest.mark.slow


def _table(rng, n: int, shift: float = 0.0) -> bytes:
    x = rng.normal(size=(n, 4)) + shift
    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    frame["label"] = (x[:, 0] + 0.5 * x[:, 1] > shift).astype(int)
    return frame.to_csv(index=False).encode()


@pytest.fixture(scope="module")
def market(server, tmp_path_factory):
    """A seller with three listed tables (API), a buyer user and the buyer organization's API key."""
    tmp = tmp_path_factory.mktemp("market")
    rng = np.random.default_rng(7)
    seller_key = server.cli("keys", "create", "--org", "table-shop", "--role", "seller").strip()
    h = {"Authorization": f"Bearer {seller_key}"}
    names = []
    for name, n, shift in (("north homes", 300, 0.0), ("south homes", 250, 0.8), ("tiny set", 40, 0.1)):
        r = httpx.post(f"{server.url}/api/v1/datasets", headers=h, data={"name": name, "kind": "table"},
                       files={"file": (f"{name}.csv", _table(rng, n, shift))})
        assert r.status_code == 201, r.text
        listing = httpx.post(f"{server.url}/api/v1/listings", headers=h, json={"dataset_id": r.json()["id"]})
        assert listing.status_code == 201
        names.append(name)
        _wait_for_profile(server, h, r.json()["id"])
    buyer = server.user("buyer-co", "buyer", "buyer@buyer.example")
    buyer_key = server.cli("keys", "create", "--org", "buyer-co", "--role", "buyer").strip()
    mine = tmp / "mine.csv"
    mine.write_bytes(_table(rng, 400))
    return {"buyer": buyer, "buyer_key": buyer_key, "mine": mine, "names": names}


def _wait_for_profile(server, headers, dataset_id: str, seconds: float = 180.0) -> None:
    """The worker profiles every upload; the listing pages show its statistics once it has (a loaded machine
    takes a while)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = httpx.get(f"{server.url}/api/v1/datasets/{dataset_id}/profile", headers=headers).json()
        if state["status"] in ("succeeded", "failed"):
            assert state["status"] == "succeeded", state
            return
        time.sleep(0.5)
    raise AssertionError(f"the profile of {dataset_id} did not finish in {seconds:.0f} s")


def _upload_mine(page, server, market) -> None:
    page.goto(f"{server.url}/portal/datasets/new")
    page.get_by_label("Name", exact=True).fill("my validation set")
    page.get_by_label("File", exact=True).set_input_files(str(market["mine"]))
    page.get_by_role("button", name="Upload", exact=True).click()
    try:
        page.wait_for_url(re.compile(r".*/portal/datasets/[0-9a-f]{32}\?uploaded=1"), timeout=120_000)
    except Exception as exc:  # say what the page showed (an error next to a field, a stopped upload)
        raise AssertionError(f"the upload did not finish: {page.locator('main').inner_text()[:2000]}") from exc


def _wait_done(page) -> None:
    page.locator("#job[data-status=succeeded], #job[data-status=failed]").wait_for(timeout=120_000)


def test_a_buyer_values_two_listings_and_reads_the_same_numbers_as_the_api(server, browser, market):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    sign_in(page, server, *market["buyer"])
    _upload_mine(page, server, market)

    nav(page, "Catalogue").click()
    page.get_by_label("Search listings").fill("homes")
    page.get_by_role("button", name="Search").click()
    assert page.get_by_role("link", name="north homes").is_visible()
    assert page.get_by_role("link", name="tiny set").count() == 0  # the search keeps matching listings only
    page.get_by_role("link", name="north homes").click()
    assert page.get_by_role("heading", name="Data dictionary").is_visible()
    assert page.get_by_role("heading", name="Statistics").is_visible()

    nav(page, "Valuations").click()
    page.get_by_role("link", name="Start a valuation").click()
    page.get_by_label("Your dataset").select_option(label="my validation set (table, labelled)")
    page.get_by_label("north homes").check()
    page.get_by_label("south homes").check()
    page.get_by_role("button", name="Start valuation").click()
    page.wait_for_url(re.compile(r".*/portal/valuations/[0-9a-f]{32}$"))
    job_id = page.url.rsplit("/", 1)[1]
    _wait_done(page)
    page.reload()

    api = httpx.get(f"{server.url}/api/v1/jobs/{job_id}",
                    headers={"Authorization": f"Bearer {market['buyer_key']}"}).json()
    assert api["status"] == "succeeded"
    by_name = {s["seller"]: s for s in api["result"]["sellers"]}
    table = page.locator("#results")
    for name in ("north homes", "south homes"):
        row = table.get_by_role("row").filter(has=page.get_by_role("rowheader", name=name))
        shown_r = float(row.locator("td[data-key=relevance]").inner_text().split("\n")[0])
        shown_d = float(row.locator("td[data-key=diversity]").inner_text().split("\n")[0])
        assert shown_r == pytest.approx(by_name[name]["relevance"], abs=5e-5)
        assert shown_d == pytest.approx(by_name[name]["diversity"], abs=5e-5)
    assert page.get_by_role("img", name="Relevance against diversity, one point per seller").is_visible()

    with page.expect_download() as info:
        page.get_by_role("link", name="Download CSV").click()
    text = Path(info.value.path()).read_text()
    assert text.startswith("# appraise relevance-diversity result; reproducibility record: {")
    record = json.loads(text.splitlines()[0].split("record: ", 1)[1])
    assert record["method"] == "relevance-diversity" and len(record["inputs"]) == 3
    frame = pd.read_csv(io.StringIO(text), comment="#")
    for _, row in frame.iterrows():
        assert row["relevance"] == pytest.approx(by_name[row["seller"]]["relevance"], rel=1e-12)
        assert row["diversity"] == pytest.approx(by_name[row["seller"]]["diversity"], rel=1e-12)
    page.close()


def test_a_data_shapley_valuation_shows_histograms_and_the_removal_curve(server, browser, market):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    sign_in(page, server, *market["buyer"])
    page.goto(f"{server.url}/portal/valuations/new")
    page.get_by_label("Method").select_option("data-shapley")
    page.get_by_role("button", name="Choose method").click()
    page.get_by_label("Your dataset").select_option(label="my validation set (table, labelled)")
    page.get_by_label("tiny set").check()
    page.get_by_label("Max permutations").fill("1000000000")
    page.get_by_role("button", name="Start valuation").click()
    error = page.locator("#e_max_permutations")
    assert error.is_visible() and "cap" in error.inner_text()  # next to its field, the job never made
    assert page.get_by_label("Max permutations").get_attribute("aria-invalid") == "true"

    page.get_by_label("Max permutations").fill("24")
    page.get_by_text("More parameters").click()
    page.get_by_label("Batch size").fill("8")
    page.get_by_label("tiny set").check()
    page.get_by_role("button", name="Start valuation").click()
    page.wait_for_url(re.compile(r".*/portal/valuations/[0-9a-f]{32}$"))
    _wait_done(page)
    page.reload()
    assert page.get_by_role("img", name="Point values of tiny set").is_visible()
    assert page.get_by_role("img", name="The buyer's validation score as points are removed").is_visible()
    page.close()


def test_the_buyer_pages_read_well_at_phone_width(server, browser, market):
    page = browser.new_page(viewport={"width": 390, "height": 844})
    sign_in(page, server, *market["buyer"])
    for path in ("/portal/catalogue", "/portal/valuations", "/portal/valuations/new"):
        page.goto(f"{server.url}{path}")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, path
    page.close()
