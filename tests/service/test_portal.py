"""The portal's server side, on SQLite and Postgres: passwords (argon2id, no plain text anywhere), sessions (cookie
flags, sign-out, lifetime, idle time), CSRF on every form, slowed and locked sign-ins, API keys for an organization's
admins (portal and REST), the profile's numbers against numpy on the same file, the dictionary, the preview, and
resumable uploads (tus) with tenant isolation."""

from __future__ import annotations

import hashlib
import io
import json
import re
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select, text

from app.db.base import utcnow
from app.db.models import Base, User
from app.db.session import make_engine, session_factory, transaction
from app.services import users
from tests.service.test_methods_layer import run_queued

PASSWORD = "a long enough secret"
API = "/api/v1"


@pytest.fixture
def db(settings):
    engine = make_engine(settings.database_url)
    yield session_factory(engine)
    engine.dispose()


def make_user(db, org: str, role: str, email: str, password: str = PASSWORD, admin: bool = False) -> User:
    with transaction(db) as s:
        return users.create_user(s, org_name=org, role=role, email=email, password=password, admin=admin)


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def sign_in(client, email: str, password: str = PASSWORD, **headers):
    form = client.get("/portal/")
    token = csrf_of(form.text)
    return client.post("/portal/sign-in", data={"email": email, "password": password, "csrf_token": token},
                       headers=headers, follow_redirects=False)


# --- accounts ----------------------------------------------------------------------------------------------------


def test_passwords_are_argon2id_and_never_stored_in_plain_text(client, db, settings):
    user = make_user(db, "acme", "seller", "Ada@Acme.example")
    assert user.email == "ada@acme.example" and user.password_hash.startswith("$argon2id$") and user.is_admin
    second = make_user(db, "acme", "seller", "bob@acme.example")
    assert not second.is_admin  # the first user of an organization is its admin
    assert sign_in(client, "ADA@acme.example").status_code == 303
    engine = make_engine(settings.database_url)
    with engine.connect() as conn:
        dumped = "".join(str(row) for table in Base.metadata.sorted_tables
                         for row in conn.execute(text(f'SELECT * FROM "{table.name}"')))
    engine.dispose()
    assert PASSWORD not in dumped and "$argon2id$" in dumped
    with transaction(db) as s, pytest.raises(users.Invalid, match="exists already"):
        users.create_user(s, org_name="acme", role="seller", email="ada@acme.example", password=PASSWORD)
    with transaction(db) as s, pytest.raises(users.Invalid, match="10 to"):
        users.create_user(s, org_name="acme", role="seller", email="c@acme.example", password="short")


def test_the_session_cookie_is_httponly_lax_and_secure_behind_https(client, db):
    make_user(db, "acme", "seller", "ada@acme.example")
    r = sign_in(client, "ada@acme.example")
    cookie = r.headers["set-cookie"]
    assert "appraise_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie
    client.cookies.clear()
    r = sign_in(client, "ada@acme.example", **{"X-Forwarded-Proto": "https"})
    assert "Secure" in r.headers["set-cookie"]


def test_sign_out_and_expiry_end_a_session(client, db, settings):
    make_user(db, "acme", "seller", "ada@acme.example")
    assert sign_in(client, "ada@acme.example").status_code == 303
    home = client.get("/portal/")
    assert "Sign out" in home.text
    stolen = client.cookies.get("appraise_session")
    assert client.post("/portal/sign-out", data={"csrf_token": csrf_of(home.text)},
                       follow_redirects=False).status_code == 303
    client.cookies.set("appraise_session", stolen)  # the old token is dead, not just forgotten by the browser
    assert "Sign in" in client.get("/portal/").text and "Sign out" not in client.get("/portal/").text

    policy = users.SessionPolicy(lifetime=timedelta(hours=1), idle=timedelta(minutes=10))
    with transaction(db) as s:
        user = s.scalar(select(User).where(User.email == "ada@acme.example"))
        used, idle, old = (users.open_session(s, user, policy) for _ in range(3))
    with db() as s:
        now = utcnow()
        assert users.session_user(s, idle, policy, now + timedelta(minutes=11)) is None  # idle too long
        for minutes in (5, 14, 23, 32, 41, 50):  # used every 9 minutes: it stays open ...
            assert users.session_user(s, used, policy, now + timedelta(minutes=minutes)) is not None
        assert users.session_user(s, used, policy, now + timedelta(minutes=61)) is None  # ... for its lifetime
        assert users.session_user(s, old, policy, now + timedelta(hours=2)) is None


def test_every_form_needs_its_csrf_token(client, db):
    make_user(db, "acme", "seller", "ada@acme.example")
    client.get("/portal/")
    r = client.post("/portal/sign-in", data={"email": "ada@acme.example", "password": PASSWORD})
    assert r.status_code == 400 and "expired" in r.text  # no double-submit token: not signed in
    assert sign_in(client, "ada@acme.example").status_code == 303
    for path, data in (("/portal/sign-out", {}), ("/portal/keys", {"name": "x"}),
                       ("/portal/password", {"current_password": PASSWORD, "new_password": "x" * 12,
                                             "repeat_password": "x" * 12})):
        r = client.post(path, data=data)
        assert r.status_code == 403 and "security token" in r.text, path
        r = client.post(path, data={**data, "csrf_token": "forged"})
        assert r.status_code == 403, path
    assert "Sign out" in client.get("/portal/").text  # still signed in: nothing happened


def test_failed_sign_ins_are_slowed_then_locked(client, db, settings):
    make_user(db, "acme", "seller", "ada@acme.example")
    policy = users.SessionPolicy(max_failures=3, lockout=timedelta(minutes=15))
    waits = []
    with transaction(db) as s:
        for _ in range(3):
            with pytest.raises(users.SignInRefused) as refused:
                users.sign_in(s, "ada@acme.example", "wrong", policy)
            waits.append(refused.value.wait)
        assert waits[0] < waits[1] and refused.value.locked and "locked" in refused.value.detail
        with pytest.raises(users.SignInRefused, match="too many failed"):  # locked: even the right password
            users.sign_in(s, "ada@acme.example", PASSWORD, policy)
        later = utcnow() + timedelta(minutes=16)
        assert users.sign_in(s, "ada@acme.example", PASSWORD, policy, now=later).email == "ada@acme.example"
        for _ in range(3):  # an unknown email is counted and locked the same way (the answer never tells)
            with pytest.raises(users.SignInRefused, match="wrong email or password"):
                users.sign_in(s, "nobody@acme.example", "x", policy)
        with pytest.raises(users.SignInRefused, match="too many"):
            users.sign_in(s, "nobody@acme.example", "x", policy)
    settings.sign_in_max_failures = 2
    assert sign_in(client, "ada@acme.example", "wrong").status_code == 401
    r = sign_in(client, "ada@acme.example", "wrong")
    assert r.status_code == 401 and "locked" in r.text
    assert sign_in(client, "ada@acme.example").status_code == 401  # locked over HTTP too


def test_changing_the_password(client, db):
    make_user(db, "acme", "seller", "ada@acme.example")
    sign_in(client, "ada@acme.example")
    form = client.get("/portal/password")
    token = csrf_of(form.text)
    r = client.post("/portal/password", data={"csrf_token": token, "current_password": "nope",
                                              "new_password": "new secret 123", "repeat_password": "new secret 123"})
    assert r.status_code == 422 and "not your password" in r.text
    r = client.post("/portal/password", data={"csrf_token": token, "current_password": PASSWORD,
                                              "new_password": "new secret 123", "repeat_password": "new secret 123"},
                    follow_redirects=False)
    assert r.status_code == 303
    client.cookies.clear()
    assert sign_in(client, "ada@acme.example").status_code == 401
    assert sign_in(client, "ada@acme.example", "new secret 123").status_code == 303


# --- API keys ------------------------------------------------------------------------------------------------


def test_an_organizations_admins_manage_its_keys(client, db, make_org):
    make_user(db, "acme", "seller", "admin@acme.example")
    make_user(db, "acme", "seller", "member@acme.example")
    sign_in(client, "admin@acme.example")
    page = client.get("/portal/keys")
    r = client.post("/portal/keys", data={"csrf_token": csrf_of(page.text), "name": "nightly"})
    assert r.status_code == 201
    key = re.search(r'value="(apr_[^"]+)"', r.text).group(1)
    assert client.get(f"{API}/whoami", headers={"Authorization": f"Bearer {key}"}).json()["org"] == "acme"
    assert key not in client.get("/portal/keys").text  # shown once
    key_id = re.search(r'/portal/keys/([0-9a-f]{32})/revoke', client.get("/portal/keys").text).group(1)
    client.post(f"/portal/keys/{key_id}/revoke", data={"csrf_token": csrf_of(page.text)})
    with db() as s:
        from app.db.models import ApiKey

        row = s.get(ApiKey, key_id)
        assert row.revoked_at is not None and row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    client.cookies.clear()
    sign_in(client, "member@acme.example")
    assert client.get("/portal/keys").status_code == 403  # not an admin of the organization

    admin_org, seller_org = make_org("ops", "admin"), make_org("shop", "seller")
    assert client.get(f"{API}/keys", headers=seller_org.headers).status_code == 403
    made = client.post(f"{API}/keys", headers=admin_org.headers, json={"name": "ci"})
    assert made.status_code == 201 and made.json()["key"].startswith("apr_")
    listed = client.get(f"{API}/keys", headers=admin_org.headers).json()["items"]
    assert {k["name"] for k in listed} >= {"ci"} and all("key" not in k for k in listed)
    assert client.delete(f"{API}/keys/{key_id}", headers=admin_org.headers).status_code == 404  # acme's key
    assert client.delete(f"{API}/keys/{made.json()['id']}", headers=admin_org.headers).status_code == 204


# --- the profile, the preview and the dictionary --------------------------------------------------------------


def upload(client, org, name: str, data: bytes, kind: str = "table", **fields):
    r = client.post(f"{API}/datasets", headers=org.headers, data={"name": name, "kind": kind, **fields},
                    files={"file": (name, data)})
    assert r.status_code == 201, r.text
    return r.json()


def test_the_profile_numbers_equal_numpy_on_the_same_file(client, make_org, settings):
    org = make_org("acme", "seller")
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"x": rng.normal(5, 2, 3000), "n": rng.integers(0, 7, 3000),
                          "flag": rng.integers(0, 2, 3000).astype(float)})
    frame["label"] = rng.choice(["a", "b", "c"], 3000, p=[0.5, 0.3, 0.2])
    ds = upload(client, org, "t.csv", frame.to_csv(index=False).encode())
    state = client.get(f"{API}/datasets/{ds['id']}/profile", headers=org.headers).json()
    assert state["status"] == "queued"
    run_queued(settings, until=state["job_id"])
    got = client.get(f"{API}/datasets/{ds['id']}/profile", headers=org.headers).json()
    assert got["status"] == "succeeded"
    prof = got["profile"]
    assert prof["rows"] == 3000 and prof["label_column"] == "label" and prof["quantiles_from"]["exact"]
    for col in prof["columns"]:
        v = frame[col["name"]].to_numpy(dtype=float)
        assert col["count"] == 3000 and col["missing"] == 0
        assert col["mean"] == pytest.approx(v.mean(), rel=1e-12) and col["std"] == pytest.approx(v.std(), rel=1e-12)
        assert (col["min"], col["max"]) == (v.min(), v.max())
        assert col["quantiles"]["p50"] == pytest.approx(np.quantile(v, 0.5))
        assert col["quantiles"]["p5"] == pytest.approx(np.quantile(v, 0.05))
        counts, edges = np.histogram(v, bins=20, range=(v.min(), v.max()))
        assert col["histogram"]["counts"] == counts.tolist()
        assert col["histogram"]["edges"] == pytest.approx(edges.tolist())
    kinds = {c["name"]: c["type"] for c in prof["columns"]}
    assert kinds == {"x": "number", "n": "integer", "flag": "binary"}
    labels = {c["value"]: c["count"] for c in prof["labels"]["counts"]}
    assert labels == frame["label"].value_counts().to_dict()


def test_a_graphs_profile_equals_networkx(client, make_org, settings):
    import networkx as nx

    org = make_org("acme", "seller")
    g = nx.disjoint_union(nx.karate_club_graph(), nx.path_graph(5))
    g.add_nodes_from([100, 101])  # two isolated nodes
    g = nx.convert_node_labels_to_integers(g)
    buf = io.BytesIO()
    np.savez(buf, edge_index=np.array(list(g.edges())).T.astype(np.int64), x=np.ones((g.number_of_nodes(), 2)))
    ds = upload(client, org, "g.npz", buf.getvalue(), kind="graph")
    run_queued(settings, until=client.get(f"{API}/datasets/{ds['id']}/profile", headers=org.headers).json()["job_id"])
    prof = client.get(f"{API}/datasets/{ds['id']}/profile", headers=org.headers).json()["profile"]
    degrees = np.array([d for _, d in g.degree()])
    assert (prof["nodes"], prof["edges"]) == (g.number_of_nodes(), g.number_of_edges())
    assert prof["components"] == nx.number_connected_components(g) and prof["isolated_nodes"] == 2
    assert prof["degree"]["max"] == degrees.max() and prof["degree"]["mean"] == pytest.approx(degrees.mean())
    assert prof["largest_component"] == 34 and prof["features"]["count"] == 2


def test_the_preview_and_the_dictionary(client, make_org, settings):
    org, other = make_org("acme", "seller"), make_org("else", "seller")
    frame = pd.DataFrame({"size": np.arange(60) * 1.5, "rooms": np.arange(60) % 4, "label": np.arange(60) % 2})
    ds = upload(client, org, "t.csv", frame.to_csv(index=False).encode())
    page = client.get(f"{API}/datasets/{ds['id']}/preview", headers=org.headers, params={"offset": 25, "limit": 5})
    assert page.json()["columns"] == ["size", "rooms", "label"]
    assert page.json()["rows"] == frame.iloc[25:30].to_numpy().tolist()
    assert client.get(f"{API}/datasets/{ds['id']}/preview", headers=other.headers).status_code == 404

    r = client.put(f"{API}/datasets/{ds['id']}/dictionary", headers=org.headers,
                   json=[{"name": "size", "type": "number", "unit": "m²", "description": "Living area"}])
    assert r.status_code == 200
    items = {e["name"]: e for e in r.json()["items"]}
    assert items["size"]["unit"] == "m²" and items["rooms"]["description"] is None and items["label"]["role"] == "label"
    bad = client.put(f"{API}/datasets/{ds['id']}/dictionary", headers=org.headers, json=[{"name": "nope"}])
    assert bad.status_code == 422 and "'nope' is not a column" in bad.json()["detail"]
    exported = client.get(f"{API}/datasets/{ds['id']}/dictionary", headers=org.headers, params={"format": "csv"})
    assert exported.text.splitlines()[1] == "size,number,m²,Living area"
    schema = client.get(f"{API}/datasets/{ds['id']}/dictionary", headers=org.headers,
                        params={"format": "table-schema"}).json()
    assert schema["fields"][0] == {"name": "size", "type": "number", "description": "Living area", "unit": "m²",
                                   "role": "feature"}
    from app.services.profiles import parse_dictionary

    assert parse_dictionary(exported.content, "d.csv")[0] == {"name": "size", "type": "number", "unit": "m²",
                                                              "description": "Living area"}
    back = parse_dictionary(json.dumps(schema).encode(), "d.json")
    assert back[0] == {"name": "size", "type": "number", "unit": "m²", "description": "Living area"}
    assert client.get(f"{API}/datasets/{ds['id']}/dictionary", headers=other.headers).status_code == 404


# --- resumable uploads ---------------------------------------------------------------------------------------


TUS = {"Tus-Resumable": "1.0.0"}


def _metadata(**values: str) -> str:
    import base64

    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def test_a_resumable_upload_becomes_a_dataset_and_stays_its_organizations(client, make_org):
    org, other = make_org("acme", "seller"), make_org("else", "seller")
    data = pd.DataFrame({"a": np.arange(2000) / 7, "label": np.arange(2000) % 2}).to_csv(index=False).encode()
    h = {**org.headers, **TUS}
    r = client.post(f"{API}/uploads", headers={**h, "Upload-Length": str(len(data)),
                                               "Upload-Metadata": _metadata(filename="t.csv")})
    assert r.status_code == 201 and r.headers["tus-resumable"] == "1.0.0"
    url = r.headers["location"]
    patch = {**h, "Content-Type": "application/offset+octet-stream"}
    half = len(data) // 2
    assert client.patch(url, headers={**patch, "Upload-Offset": "0"}, content=data[:half]).headers[
        "upload-offset"] == str(half)
    assert client.head(url, headers=h).headers["upload-offset"] == str(half)
    assert client.patch(url, headers={**patch, "Upload-Offset": "0"}, content=data[:half]).status_code == 409
    assert client.patch(url, headers={**h, "Upload-Offset": str(half), "Content-Type": "text/plain"},
                        content=b"x").status_code == 415
    assert client.head(url, headers=org.headers).status_code == 412  # no Tus-Resumable
    for method in ("head", "patch", "delete"):  # another organization's upload is a 404
        r = client.request(method.upper(), url, headers={**other.headers, **TUS, "Upload-Offset": str(half),
                                                         "Content-Type": "application/offset+octet-stream"})
        assert r.status_code == 404, method
    early = client.post(f"{url}/dataset", headers=org.headers, json={"name": "t", "kind": "table"})
    assert early.status_code == 422 and "not finished" in early.json()["detail"]
    assert client.patch(url, headers={**patch, "Upload-Offset": str(half)}, content=data[half:]).status_code == 204
    made = client.post(f"{url}/dataset", headers=org.headers, json={"name": "t", "kind": "table"})
    assert made.status_code == 201, made.text
    assert made.json()["sha256"] == hashlib.sha256(data).hexdigest() and made.json()["rows"] == 2000
    assert client.head(url, headers=h).status_code == 404  # consumed
    too_big = client.post(f"{API}/uploads", headers={**h, "Upload-Length": str(10**12)})
    assert too_big.status_code == 413


def _complete_upload(client, org, data: bytes, filename: str = "t.csv") -> str:
    h = {**org.headers, **TUS}
    r = client.post(f"{API}/uploads", headers={**h, "Upload-Length": str(len(data)),
                                               "Upload-Metadata": _metadata(filename=filename)})
    assert r.status_code == 201
    url = r.headers["location"]
    done = client.patch(url, headers={**h, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"},
                        content=data)
    assert done.status_code == 204
    return url


def _temp_files(settings) -> list[str]:
    return sorted(p.name for p in (settings.storage_dir / ".tmp").iterdir())


def test_a_finished_upload_survives_a_correctable_failure_and_not_a_bad_file(client, make_org, settings,
                                                                             monkeypatch):
    """Making the dataset fails: for a field to correct or a database busy for a moment the upload stays and the
    same request succeeds afterwards; a file whose content is invalid is dropped with its bytes."""
    from sqlalchemy.exc import OperationalError

    from app.services import datasets

    org = make_org("acme", "seller")
    data = pd.DataFrame({"a": np.arange(50) / 7, "label": np.arange(50) % 2}).to_csv(index=False).encode()
    url = _complete_upload(client, org, data)
    parts = _temp_files(settings)
    assert len(parts) == 1

    bad_kind = client.post(f"{url}/dataset", headers=org.headers, json={"name": "t", "kind": "banana"})
    assert bad_kind.status_code == 422 and "kind" in bad_kind.text
    assert client.head(url, headers={**org.headers, **TUS}).headers["upload-offset"] == str(len(data))

    real = datasets.create_dataset

    def busy(*args, **kwargs):  # what SQLite says when another connection holds the write lock too long
        raise OperationalError("BEGIN IMMEDIATE", {}, Exception("database is locked"))

    monkeypatch.setattr(datasets, "create_dataset", busy)
    locked = client.post(f"{url}/dataset", headers=org.headers, json={"name": "t", "kind": "table"})
    assert locked.status_code == 503 and locked.headers["retry-after"]
    assert client.head(url, headers={**org.headers, **TUS}).headers["upload-offset"] == str(len(data))
    assert _temp_files(settings) == parts  # the part, and no leftover link
    monkeypatch.setattr(datasets, "create_dataset", real)

    made = client.post(f"{url}/dataset", headers=org.headers, json={"name": "t", "kind": "table"})
    assert made.status_code == 201, made.text
    assert made.json()["sha256"] == hashlib.sha256(data).hexdigest() and made.json()["rows"] == 50
    assert client.head(url, headers={**org.headers, **TUS}).status_code == 404  # consumed
    again = client.post(f"{url}/dataset", headers=org.headers, json={"name": "t", "kind": "table"})
    assert again.status_code == 404
    assert _temp_files(settings) == []

    broken = _complete_upload(client, org, b"a,label\n1,0\n2,1,7\n")
    refused = client.post(f"{broken}/dataset", headers=org.headers, json={"name": "b", "kind": "table"})
    assert refused.status_code == 422, refused.text
    assert client.head(broken, headers={**org.headers, **TUS}).status_code == 404
    assert _temp_files(settings) == []
