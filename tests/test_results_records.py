"""What a buyer downloads: the removal curve equals retraining without the removed points (scikit-learn), and a
result's reproducibility record is enough to re-run the CLI and get the same values."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from app.methods import METHODS
from app.methods.context import RunContext
from app.methods.inputs import DataRef, Inputs
from app.methods.params import cli_option
from tests.test_cli import run


def _write(path, n, seed, flip=0.15):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = (x[:, 0] + 0.7 * x[:, 1] > 0).astype(int)
    y[rng.random(n) < flip] ^= 1
    frame = pd.DataFrame(x, columns=["a", "b", "c"])
    frame["label"] = y
    frame.to_csv(path, index=False)
    return frame


@pytest.fixture
def files(tmp_path):
    valid = _write(tmp_path / "valid.csv", 120, 0, flip=0.0)
    seller = _write(tmp_path / "seller.csv", 40, 1)
    return tmp_path / "valid.csv", tmp_path / "seller.csv", valid, seller


def _run(method_id, files, **given):
    method = METHODS[method_id]
    inputs = Inputs(DataRef.of_path(files[0]), [DataRef.of_path(files[1])])
    return method.run(inputs, method.validate(given), RunContext())


@pytest.mark.parametrize("method_id", ["data-shapley", "knn-shapley"])
def test_the_removal_curve_equals_retraining_without_the_removed_points(files, method_id):
    _, _, valid, seller = files
    given = {"max_permutations": 32, "seed": 2} if method_id == "data-shapley" else {"k": 3}
    result = _run(method_id, files, **given)
    curve = result["removal_curve"]
    values = np.array(result["sellers"][0]["values"])
    order = np.argsort(-values, kind="stable")
    xs, ys = seller[["a", "b", "c"]].to_numpy(), seller["label"].to_numpy()
    xv, yv = valid[["a", "b", "c"]].to_numpy(), valid["label"].to_numpy()
    assert curve["fractions"][0] == 0 and curve["removed"][-1] == len(ys) // 2
    for name, ranking in (("highest_first", order), ("lowest_first", order[::-1])):
        for k, score in zip(curve["removed"], curve[name], strict=True):
            keep = np.setdiff1d(np.arange(len(ys)), ranking[:k])
            model = (LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000) if method_id == "data-shapley"
                     else KNeighborsClassifier(n_neighbors=min(3, len(keep))))
            direct = (model.fit(xs[keep], ys[keep]).predict(xv) == yv).mean()
            assert score == pytest.approx(direct, abs=1.5 / len(yv)), (name, k)  # within one validation point
    assert curve["highest_first"][-1] <= curve["lowest_first"][-1]  # dropping the best hurts more


def test_the_reproducibility_record_reruns_to_the_same_values(files, capsys):
    first = _run("data-shapley", files, max_permutations=24, seed=5, batch_size=8, truncation=0.0)
    record = first["provenance"]
    assert record["method"] == "data-shapley" and record["seed"] == 5
    assert [i["role"] for i in record["inputs"]] == ["buyer", "seller"]
    argv = ["value", record["method"], "--buyer", str(files[0]), "--seller", str(files[1]), "--json"]
    for name, value in record["params"].items():
        if value is None or name == "base_dataset_id":
            continue
        if isinstance(value, bool):
            argv += [cli_option(name)] if value else []
        else:
            argv += [cli_option(name), str(value)]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    again = json.loads(out)
    assert again["values"] == first["sellers"][0]["values"]
    assert again["provenance"]["inputs"] == record["inputs"]  # the same files, by their sha256


def test_a_data_oob_job_checkpoints_and_resumes_to_the_same_values(files):
    """The method hands its checkpoints to the run's context and resumes from one (what a service worker taking
    over a job does): the values equal those of the uninterrupted run."""
    method = METHODS["data-oob"]
    inputs = Inputs(DataRef.of_path(files[0]), [DataRef.of_path(files[1])])
    params = method.validate({"n_models": 32, "batch_size": 8, "seed": 4, "workers": 1})
    states: list[dict] = []
    whole = method.run(inputs, params, RunContext(checkpoint=states.append))
    assert len(states) == 4
    resumed = method.run(inputs, params, RunContext(resume=states[1]))
    assert resumed["values"] == whole["values"] and resumed["models"] == whole["models"] == 32


def test_a_data_shapley_job_resumes_a_checkpoint_with_its_own_batch_size(files, monkeypatch):
    """Batches are evened out to the budget (12 in batches of 8 run as 2 × 6); a checkpoint written with another
    batch size (by the version before that) is resumed with its own, to the values that version would give."""
    import app.methods.montecarlo as montecarlo

    method = METHODS["data-shapley"]
    inputs = Inputs(DataRef.of_path(files[0]), [DataRef.of_path(files[1])])
    params = method.validate({"max_permutations": 12, "batch_size": 8, "seed": 3, "workers": 1,
                              "relative_change": None})
    states: list[dict] = []
    evened = method.run(inputs, params, RunContext(checkpoint=states.append))
    assert evened["permutations"] == 12 and states[-1]["params"]["batch_size"] == 6  # 2 × 6, not 2 × 8 = 16

    with monkeypatch.context() as m:  # the earlier version: batches as asked
        m.setattr(montecarlo, "even_batch_size", lambda budget, size, resume=None: size)
        old: list[dict] = []
        uneven = method.run(inputs, params, RunContext(checkpoint=old.append))
    assert uneven["permutations"] == 16 and old[0]["params"]["batch_size"] == 8 and old[0]["batches_done"] == 1
    resumed = method.run(inputs, params, RunContext(resume=old[0]))
    assert resumed["permutations"] == 16 and resumed["values"] == uneven["values"]
