"""``/listings``: who may list (the dataset's owner, seller or admin), who sees what (public listings, listings
naming a buyer), metadata only, and ``dataset_visible_for_valuation`` (the rule jobs use). SQLite and Postgres."""

from __future__ import annotations

import io

import numpy as np
import pytest

from app.db.session import make_engine, session_factory
from app.services.errors import NotFound
from app.services.keys import Caller
from app.services.listings import dataset_visible_for_valuation

PROBLEM = "application/problem+json"
L = "/api/v1/listings"
CSV = b"a,b,label\n1,2,0\n3,4,1\n5,6,1\n"


def upload_table(client, org, name: str = "t") -> dict:
    r = client.post("/api/v1/datasets", headers=org.headers, files={"file": (f"{name}.csv", CSV)},
                    data={"name": name, "kind": "table"})
    assert r.status_code == 201, r.text
    return r.json()


def upload_graph(client, org) -> dict:
    buf = io.BytesIO()
    np.savez(buf, x=np.ones((5, 3)), edge_index=np.array([[0, 1, 2, 3], [1, 2, 3, 4]]))
    r = client.post("/api/v1/datasets", headers=org.headers, files={"file": ("g.npz", buf.getvalue())},
                    data={"name": "graph", "kind": "graph"})
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture
def market(client, make_org):
    """A seller with a public table listing and a graph listed to buyer b1 only; buyers b1 and b2."""
    s = make_org("sellco", "seller")
    b1, b2 = make_org("b1", "buyer"), make_org("b2", "buyer")
    table, graph = upload_table(client, s), upload_graph(client, s)
    public = client.post(L, headers=s.headers, json={"dataset_id": table["id"]})
    private = client.post(L, headers=s.headers, json={"dataset_id": graph["id"], "buyers": ["b1"]})
    assert public.status_code == 201 and private.status_code == 201, (public.text, private.text)
    return {"s": s, "b1": b1, "b2": b2, "table": table, "graph": graph, "public": public.json(),
            "private": private.json()}


def ids(client, org) -> set[str]:
    page = client.get(L, headers=org.headers).json()
    assert page["total"] == len(page["items"])
    return {item["id"] for item in page["items"]}


def test_create_listing_returns_metadata_only(market):
    pub, priv = market["public"], market["private"]
    assert (pub["dataset_id"], pub["seller"], pub["public"], pub["buyers"]) == (
        market["table"]["id"], "sellco", True, [])
    assert pub["dataset"] == {"id": market["table"]["id"], "name": "t", "kind": "table", "format": "csv",
                              "rows": 3, "columns": ["a", "b"], "features": 2, "nodes": None, "edges": None,
                              "graphs": None, "has_labels": True}
    assert (priv["public"], priv["buyers"]) == (False, ["b1"])
    g = priv["dataset"]
    assert (g["kind"], g["format"], g["nodes"], g["edges"], g["graphs"], g["features"], g["has_labels"]) == (
        "graph", "npz", 5, 4, 1, 3, False)


def test_visibility_public_named_and_other_buyer(client, market):
    s, b1, b2 = market["s"], market["b1"], market["b2"]
    pub, priv = market["public"]["id"], market["private"]["id"]
    assert ids(client, s) == {pub, priv}
    assert ids(client, b1) == {pub, priv}
    assert ids(client, b2) == {pub}
    # a buyer sees metadata, never the other named buyers, the rows or where the files are
    seen = {i["id"]: i for i in client.get(L, headers=b1.headers).json()["items"]}
    assert seen[priv]["buyers"] is None and seen[priv]["seller"] == "sellco"
    body = client.get(L, headers=b1.headers).text
    for secret in ("storage", "datasets/", "sha256", "1,2,0", "org_id"):
        assert secret not in body
    assert client.get(f"{L}/{priv}", headers=b1.headers).json()["dataset_id"] == market["graph"]["id"]
    r = client.get(f"{L}/{priv}", headers=b2.headers)
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
    # a listed dataset is still not downloadable or readable by a buyer
    for path in (f"/api/v1/datasets/{market['table']['id']}", f"/api/v1/datasets/{market['table']['id']}/download"):
        assert client.get(path, headers=b1.headers).status_code == 404


def test_another_sellers_listings_are_invisible(client, make_org, market):
    other = make_org("othersell", "seller")
    mine = client.post(L, headers=other.headers, json={"dataset_id": upload_table(client, other, "o")["id"]}).json()
    assert ids(client, other) == {mine["id"]}
    assert ids(client, market["s"]) == {market["public"]["id"], market["private"]["id"]}
    assert client.get(f"{L}/{market['public']['id']}", headers=other.headers).status_code == 404
    # both buyers now see the new public listing too, newest first
    items = client.get(L, headers=market["b2"].headers).json()["items"]
    assert [i["id"] for i in items] == [mine["id"], market["public"]["id"]]
    paged = client.get(L, params={"limit": 1, "offset": 1}, headers=market["b2"].headers).json()
    assert [i["id"] for i in paged["items"]] == [market["public"]["id"]] and paged["total"] == 2


def test_admin_sees_own_and_open_listings(client, make_org, market):
    admin = make_org("root", "admin")
    own = client.post(L, headers=admin.headers, json={"dataset_id": upload_table(client, admin, "a")["id"]})
    assert own.status_code == 201
    assert ids(client, admin) == {own.json()["id"], market["public"]["id"]}


def test_buyers_by_id_and_errors(client, make_org, market):
    s, b1, b2 = market["s"], market["b1"], market["b2"]
    ds = market["table"]["id"]
    r = client.post(L, headers=s.headers, json={"dataset_id": ds, "buyers": [b2.id, "b1", "b2"]})
    assert r.status_code == 201 and r.json()["buyers"] == ["b1", "b2"]
    r = client.post(L, headers=s.headers, json={"dataset_id": ds, "buyers": ["b1", "nobody", "ghost"]})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    assert r.json()["field"] == "buyers" and "'nobody'" in r.json()["detail"] and "'ghost'" in r.json()["detail"]
    r = client.post(L, headers=s.headers, json={"dataset_id": ds, "buyers": []})
    assert r.status_code == 422 and r.json()["field"] == "buyers"
    r = client.post(L, headers=s.headers, json={"dataset_id": ds, "buyers": ["sellco"]})
    assert r.status_code == 422 and "cannot value" in r.json()["detail"]
    r = client.post(L, headers=s.headers, json={"buyers": ["b1"]})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    # a buyer may not list, not even its own dataset
    own = upload_table(client, b1, "mine")
    r = client.post(L, headers=b1.headers, json={"dataset_id": own["id"]})
    assert r.status_code == 403 and r.headers["content-type"] == PROBLEM
    # another organization's dataset, or an unknown one: 404
    other = make_org("othersell", "seller")
    for dataset_id in (ds, "nope"):
        r = client.post(L, headers=other.headers, json={"dataset_id": dataset_id})
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
    assert client.post(L, json={"dataset_id": ds}).status_code == 401
    assert client.get(L).status_code == 401
    assert client.delete(f"{L}/{market['public']['id']}").status_code == 401


def test_delete_listing_owner_only(client, make_org, market):
    s, b1 = market["s"], market["b1"]
    priv = market["private"]["id"]
    assert client.delete(f"{L}/{priv}", headers=b1.headers).status_code == 404  # a buyer it names
    assert client.delete(f"{L}/{priv}", headers=make_org("x", "seller").headers).status_code == 404
    assert priv in ids(client, b1)
    r = client.delete(f"{L}/{priv}", headers=s.headers)
    assert r.status_code == 204
    assert ids(client, b1) == {market["public"]["id"]} and ids(client, s) == {market["public"]["id"]}
    assert client.delete(f"{L}/{priv}", headers=s.headers).status_code == 404
    # the dataset itself stays
    assert client.get(f"/api/v1/datasets/{market['graph']['id']}", headers=s.headers).status_code == 200


def test_dataset_visible_for_valuation(client, settings, make_org, market):
    engine = make_engine(settings.database_url)
    factory = session_factory(engine)

    def caller(org) -> Caller:
        return Caller(org_id=org.id, org_name=org.name, role=org.role, key_id="k")

    b1, b2, s = caller(market["b1"]), caller(market["b2"]), caller(market["s"])
    table, graph = market["table"]["id"], market["graph"]["id"]
    own = upload_table(client, market["b2"], "own")["id"]
    unlisted = upload_table(client, market["s"], "unlisted")["id"]
    try:
        with factory() as session:
            assert dataset_visible_for_valuation(session, b1, table).id == table  # public
            assert dataset_visible_for_valuation(session, b1, graph).id == graph  # names b1
            assert dataset_visible_for_valuation(session, b2, table).id == table
            assert dataset_visible_for_valuation(session, b2, own).id == own  # its own
            assert dataset_visible_for_valuation(session, s, unlisted).id == unlisted
            for who, dataset_id in ((b2, graph), (b1, unlisted), (b1, own), (s, own), (b1, "nope")):
                with pytest.raises(NotFound):
                    dataset_visible_for_valuation(session, who, dataset_id)
        assert client.delete(f"{L}/{market['private']['id']}", headers=market["s"].headers).status_code == 204
        with factory() as session, pytest.raises(NotFound):
            dataset_visible_for_valuation(session, b1, graph)
    finally:
        engine.dispose()
