"""A seller's view of the demand for its listing: how many valuations ran, by method and by day, with the buyer
unnamed unless it chose to be; its own points' values in a Shapley job (the highest and lowest rows, a histogram)
equal to what the API serves the seller, downloadable as CSV and Parquet; another organization gets 404s."""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest

from tests.service.test_methods_layer import listed, run_queued, submit, upload, write_table
from tests.service.test_portal import db, make_user, sign_in  # noqa: F401  (db is a fixture)

API = "/api/v1"


def test_a_seller_sees_the_demand_and_its_own_points_values(client, db, make_org, settings, tmp_path):  # noqa: F811
    buyer, seller = make_org("buyer-co", "buyer"), make_org("seller-co", "seller")
    b = upload(client, buyer, write_table(tmp_path / "buyer.csv", 40, 1))["id"]
    dataset = listed(client, seller, upload(client, seller, write_table(tmp_path / "offer.csv", 30, 2))["id"])
    listing_id = client.get(f"{API}/listings", headers=seller.headers).json()["items"][0]["id"]
    jobs = []
    for method, params in (("knn-shapley", {"k": 3}), ("knn-shapley", {"k": 5}), ("relevance-diversity", {})):
        r = submit(client, buyer, method, b, [dataset], params)
        assert r.status_code == 202, r.text
        jobs.append(run_queued(settings, until=r.json()["id"]))
    served = client.get(f"{API}/jobs/{jobs[0]}/values", headers=seller.headers,
                        params={"order": "index", "limit": 1000}).json()["items"]
    values = np.array([v["value"] for v in served])
    assert len(values) == 30 and np.ptp(values) > 0

    make_user(db, "seller-co", "seller", "seller@seller.example")
    assert sign_in(client, "seller@seller.example").status_code == 303
    html = client.get(f"/portal/listings/{listing_id}").text
    demand = html[html.index('id="demand-h"'):]
    assert "buyer-co" not in demand and "a buyer" in demand  # the buyer did not choose to be named
    assert "Valued 3 times." in demand
    assert demand.count("<td>knn-shapley</td>") == 2 and demand.count("<td>relevance-diversity</td>") == 1
    days = re.findall(r'<span class="badge">(\d{4}-\d\d-\d\d): (\d+)</span>', demand)
    assert sum(int(n) for _, n in days) == 3

    page = client.get(f"/portal/listings/{listing_id}/jobs/{jobs[0]}")
    assert page.status_code == 200
    best, worst = int(np.argmax(values)), int(np.argmin(values))
    assert f"{values[best]:.4f}" in page.text and f"{values[worst]:.4f}" in page.text
    assert 'role="img"' in page.text  # the histogram

    csv = pd.read_csv(io.BytesIO(client.get(f"/portal/listings/{listing_id}/jobs/{jobs[0]}/values.csv").content))
    assert csv["row"].tolist() == list(range(30))
    assert csv["value"].to_numpy() == pytest.approx(values, rel=1e-12, abs=1e-15)
    parquet = pd.read_parquet(io.BytesIO(
        client.get(f"/portal/listings/{listing_id}/jobs/{jobs[0]}/values.parquet").content))
    assert parquet["value"].to_numpy() == pytest.approx(values, rel=1e-12, abs=1e-15)

    client.cookies.clear()
    make_org("rival-co", "seller")
    make_user(db, "rival-co", "seller", "rival@rival.example")
    assert sign_in(client, "rival@rival.example").status_code == 303
    for url in (f"/portal/listings/{listing_id}", f"/portal/listings/{listing_id}/jobs/{jobs[0]}",
                f"/portal/listings/{listing_id}/jobs/{jobs[0]}/values.csv"):
        assert client.get(url).status_code == 404, url
