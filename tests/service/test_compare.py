"""The portal's compare page: two finished valuations of the same sellers side by side, each seller's score as the
API serves it and its place in each method's own ranking, and Spearman's rank correlation of those places equal to
scipy's; another organization's job is a 404 there as everywhere."""

from __future__ import annotations

import re

import pytest
from scipy.stats import spearmanr

from app.methods import METHODS
from app.services.results import score_of
from tests.service.test_methods_layer import listed, run_queued, submit, upload, write_table
from tests.service.test_portal import db, make_user, sign_in  # noqa: F401  (db is a fixture)

API = "/api/v1"


def _finished(client, settings, buyer, method, b, sellers, params):
    r = submit(client, buyer, method, b, sellers, params)
    assert r.status_code == 202, r.text
    job_id = run_queued(settings, until=r.json()["id"])
    got = client.get(f"{API}/jobs/{job_id}", headers=buyer.headers).json()
    assert got["status"] == "succeeded", got
    entries = got["result"]["sellers"]
    places = {e["dataset_id"]: place for place, e in enumerate(METHODS[method].ranked(entries), start=1)}
    return job_id, {e["dataset_id"]: score_of(METHODS[method], e) for e in entries}, places


def test_the_compare_page_shows_both_scores_and_their_rank_correlation(client, db, make_org, settings, tmp_path):  # noqa: F811
    buyer, seller = make_org("buyer-co", "buyer"), make_org("seller-co", "seller")
    b = upload(client, buyer, write_table(tmp_path / "buyer.csv", 60, 1))["id"]
    sellers = [listed(client, seller, upload(client, seller, write_table(tmp_path / f"s{i}.csv", 40, 10 + i,
                                                                         shift=0.3 * i))["id"]) for i in range(4)]
    first, scores_a, places_a = _finished(client, settings, buyer, "relevance-diversity", b, sellers, {})
    second, scores_b, places_b = _finished(client, settings, buyer, "knn-shapley", b, sellers, {"k": 3})

    make_user(db, "buyer-co", "buyer", "analyst@buyer.example")
    assert sign_in(client, "analyst@buyer.example").status_code == 303
    page = client.get("/portal/valuations/compare", params=[("jobs", first), ("jobs", second)])
    assert page.status_code == 200, page.text
    html = page.text
    for ds in sellers:  # every seller's two scores, as the API served them
        for scores in (scores_a, scores_b):
            assert f"{scores[ds]:.4f}" in html
    for ds in sellers:  # and their places, as each method ranks them
        assert f"{scores_a[ds]:.4f} <span class=\"muted small\">#{places_a[ds]}</span>" in html
    rho = re.search(r'<td class="num">4</td><td class="num">(-?[0-9.]+)</td>', html)
    assert rho, html
    expected = spearmanr([-places_a[d] for d in sellers], [-places_b[d] for d in sellers]).statistic
    assert float(rho.group(1)) == pytest.approx(expected, abs=5e-4)

    make_user(db, "seller-co", "seller", "someone@seller.example")
    client.cookies.clear()  # a second person, in a fresh browser
    assert sign_in(client, "someone@seller.example").status_code == 303
    assert client.get("/portal/valuations/compare", params=[("jobs", first)]).status_code == 404
