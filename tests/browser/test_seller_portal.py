"""A seller in the browser, as a person uses the portal (elements found by label and role): sign in, a refused
upload naming the bad row, column and value, a good upload with its progress bar, the profile (rows, columns,
statistics), the preview, a dictionary entry, a listing, sign out; another organization's user gets 404s."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from tests.browser.conftest import nav, sign_in

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("files")
    bad = tmp / "prices.csv"
    bad.write_text("size,rooms,label\n52.5,2,0\n71.0,3,1\nsmall,1,0\n88.2,4,1\n")
    rng = np.random.default_rng(0)
    n = 60_000  # a few MB: the upload takes long enough to show its progress
    frame = pd.DataFrame({"size": rng.normal(70, 15, n).round(3), "rooms": rng.integers(1, 6, n),
                          "age": rng.uniform(0, 100, n).round(2)})
    frame["label"] = (frame["size"] > 70).astype(int)
    good = tmp / "homes.csv"
    frame.to_csv(good, index=False)
    return {"bad": bad, "good": good, "frame": frame}


def test_a_seller_uploads_profiles_describes_lists_and_signs_out(server, browser, files):
    email, password = server.user("acme-data", "seller", "seller@acme.example")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    sign_in(page, server, email, password)

    nav(page, "Datasets").click()
    page.get_by_role("link", name="Upload a dataset").first.click()
    page.get_by_label("Name", exact=True).fill("prices")
    page.get_by_label("File", exact=True).set_input_files(str(files["bad"]))
    page.get_by_role("button", name="Upload", exact=True).click()
    problems = page.locator("#problems")
    problems.wait_for(state="visible", timeout=30_000)
    text = problems.inner_text()
    assert "row 3" in text and "'size'" in text and "'small' is not a number" in text, text
    assert page.locator("#file-error").is_visible()

    page.get_by_label("Name", exact=True).fill("homes")
    page.get_by_label("File", exact=True).set_input_files(str(files["good"]))
    page.get_by_role("button", name="Upload", exact=True).click()
    progress = page.get_by_label("Upload progress")
    progress.wait_for(state="visible")  # the bar, with bytes and percent
    assert re.search(r"of \d", page.locator("#progress-bytes").inner_text())
    page.wait_for_url(re.compile(r".*/portal/datasets/[0-9a-f]{32}\?uploaded=1"), timeout=120_000)
    dataset_url = page.url.split("?")[0]

    page.locator("#profile[data-status=succeeded]").wait_for(timeout=120_000)  # live progress, then the profile
    assert page.locator("#rows").inner_text() == "60,000"
    table = page.get_by_role("table").first
    for column in ("size", "rooms", "age"):
        assert table.get_by_role("rowheader", name=column).is_visible()
    size_row = page.get_by_role("row").filter(has=page.get_by_role("rowheader", name="size"))
    mean = float(size_row.get_by_role("cell").nth(4).inner_text())
    assert mean == pytest.approx(files["frame"]["size"].mean(), rel=1e-3)

    page.get_by_role("link", name="Preview rows").click()
    first = page.get_by_role("row").nth(1).get_by_role("cell")
    assert float(first.nth(1).inner_text()) == pytest.approx(files["frame"]["size"].iloc[0])
    page.get_by_role("link", name="Next page").click()
    assert page.get_by_text("Page 2 of").is_visible()

    page.goto(dataset_url)
    page.get_by_role("link", name="Data dictionary").click()
    page.get_by_label("Unit of size").fill("m²")
    page.get_by_label("Description of size").fill("Living area")
    page.get_by_label("Type of size").select_option("number")
    page.get_by_role("button", name="Save dictionary").click()
    assert page.get_by_text("Dictionary saved.").is_visible()
    assert page.get_by_label("Unit of size").input_value() == "m²"

    page.goto(dataset_url)
    page.get_by_role("link", name="List for buyers").click()
    page.get_by_label("Title").fill("Homes 2026")
    page.get_by_label("Description").fill("Sixty thousand homes with their size, rooms and age.")
    page.get_by_label("Licence").fill("CC BY 4.0")
    page.get_by_role("button", name="Create listing").click()
    assert page.get_by_text("Listed.").is_visible()
    listing_url = page.url.split("?")[0]
    nav(page, "Listings").click()
    assert page.get_by_role("link", name="Homes 2026").is_visible()

    page.get_by_role("button", name="Sign out").click()
    assert page.get_by_role("button", name="Sign in").is_visible()
    page.goto(dataset_url)
    assert page.get_by_role("button", name="Sign in").is_visible()  # signed out: back to the sign-in form

    other_email, other_password = server.user("other-co", "seller", "someone@other.example")
    sign_in(page, server, other_email, other_password)
    for url in (dataset_url, f"{dataset_url}/preview", f"{dataset_url}/dictionary", listing_url):
        response = page.goto(url)
        assert response.status == 404, url
        assert page.get_by_role("heading", name="Not found").is_visible()
    page.close()


def test_the_seller_pages_read_well_at_phone_width(server, browser, files, tmp_path):
    email, password = server.user("phone-co", "seller", "phone@acme.example")
    page = browser.new_page(viewport={"width": 390, "height": 844})
    sign_in(page, server, email, password)
    page.goto(f"{server.url}/portal/datasets/new")
    page.get_by_label("Name", exact=True).fill("small homes")
    page.get_by_label("File", exact=True).set_input_files(str(files["bad"]).replace("prices", "prices"))
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, "the upload form must not scroll sideways on a phone"
    page.close()
