"""Data-OOB: the values equal a direct scikit-learn bagging reference fitted on the same bootstrap index sets,
every executor gives the same values, and on a task with flipped labels the flipped points rank lowest (AUC)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.metrics import roc_auc_score
from sklearn.tree import DecisionTreeClassifier

from app.valuation.data_oob import bootstrap_indices, data_oob
from app.valuation.errors import ValuationError
from app.valuation.shapley.executors import LocalExecutor


@pytest.fixture(scope="module")
def flipped():
    x, y = make_classification(n_samples=400, n_features=6, n_informative=4, n_redundant=0, class_sep=1.5,
                               random_state=2)
    rng = np.random.default_rng(2)
    flip = rng.random(len(y)) < 0.1
    y = np.where(flip, 1 - y, y)
    return x, y, flip


def bagging_reference(x, y, n_models, batch_size, max_depth, seed):
    """Bagging by hand on the same index sets: one cloned tree per set, every prediction in a dense (B, n) matrix,
    the accuracy over the out-of-bag cells of each column."""
    n = len(y)
    base = DecisionTreeClassifier(max_depth=max_depth, max_features="sqrt")
    sets = [idx for k in range(n_models // batch_size) for idx in bootstrap_indices(seed, k, batch_size, n)]
    preds = np.stack([clone(base).set_params(random_state=b).fit(x[s], y[s]).predict(x) for b, s in enumerate(sets)])
    in_bag = np.zeros((len(sets), n), dtype=bool)
    for b, s in enumerate(sets):
        in_bag[b, s] = True
    oob = ~in_bag
    hits = np.ma.masked_array(preds == y[None, :], mask=in_bag)
    return hits.mean(axis=0).filled(np.nan), oob.sum(axis=0)


def test_values_equal_a_scikit_learn_bagging_reference(flipped):
    x, y, _ = flipped
    got = data_oob(x, y, n_models=48, batch_size=8, max_depth=4, seed=5, chunk_rows=37)
    want, counts = bagging_reference(x, y, 48, 8, 4, seed=5)
    np.testing.assert_array_equal(got.oob_counts, counts)
    np.testing.assert_allclose(got.values, want, rtol=0, atol=1e-12)
    assert got.models == 48 and got.batches == 6
    # out of bag with probability (1 - 1/n)^n ≈ e^-1: the counts' mean is B·(1 − 1/n)^n within 3 SE
    p = (1 - 1 / len(y)) ** len(y)
    assert abs(counts.mean() - 48 * p) < 3 * np.sqrt(48 * p * (1 - p) / len(y))
    se = np.sqrt(got.values * (1 - got.values) / got.oob_counts)
    np.testing.assert_allclose(got.standard_errors, se, rtol=0, atol=1e-15)


def test_two_local_workers_give_the_same_values(flipped):
    x, y, _ = flipped
    one = data_oob(x, y, n_models=32, batch_size=8, max_depth=4, seed=1)
    two = data_oob(x, y, n_models=32, batch_size=8, max_depth=4, seed=1, executor=LocalExecutor(2))
    np.testing.assert_array_equal(one.values, two.values)


def test_flipped_labels_get_the_lowest_values(flipped, capsys):
    x, y, flip = flipped
    got = data_oob(x, y, n_models=128, seed=0)
    auc = roc_auc_score(flip, -got.values)
    with capsys.disabled():
        print(f"\nData-OOB, 400 points, 10% labels flipped, 128 trees: AUC for the flipped labels {auc:.3f}")
    assert auc > 0.9


def test_bad_inputs_are_named():
    with pytest.raises(ValuationError, match="one label per row"):
        data_oob(np.zeros((3, 2)), np.zeros(4))
    with pytest.raises(ValuationError, match="n_models and batch_size"):
        data_oob(np.zeros((3, 2)), np.zeros(3), n_models=0)


def test_a_run_resumed_from_a_checkpoint_ends_with_the_uninterrupted_values(flipped):
    x, y, _ = flipped
    states: list[dict] = []
    whole = data_oob(x, y, n_models=64, batch_size=8, seed=5, checkpoint=states.append)
    assert [s["batches_done"] for s in states] == list(range(1, 9))
    json.loads(json.dumps(states[2]))  # plain JSON: the service stores it as is
    fitted: list[int] = []
    resumed = data_oob(x, y, n_models=64, batch_size=8, seed=5, resume_from=states[2],
                       progress=lambda done, total: fitted.append(done))
    assert fitted == [32, 40, 48, 56, 64]  # only the 5 missing batches ran
    np.testing.assert_array_equal(resumed.oob_counts, whole.oob_counts)
    np.testing.assert_array_equal(resumed.values, whole.values)
    assert resumed.models == whole.models == 64
    finished = data_oob(x, y, n_models=64, batch_size=8, seed=5, resume_from=states[-1],
                        progress=lambda done, total: fitted.append(-1))
    assert -1 not in fitted and np.array_equal(finished.values, whole.values, equal_nan=True)


def test_a_checkpoint_of_another_run_is_refused(flipped):
    x, y, _ = flipped
    states: list[dict] = []
    data_oob(x[:100], y[:100], n_models=16, batch_size=8, seed=5, checkpoint=states.append)
    with pytest.raises(ValuationError, match="seed=5, this run 6"):
        data_oob(x[:100], y[:100], n_models=16, batch_size=8, seed=6, resume_from=states[0])
    with pytest.raises(ValuationError, match="batch_size=8, this run 4"):
        data_oob(x[:100], y[:100], n_models=16, batch_size=4, seed=5, resume_from=states[0])
    with pytest.raises(ValuationError, match="n=100, this run 99"):
        data_oob(x[:99], y[:99], n_models=16, batch_size=8, seed=5, resume_from=states[0])
    with pytest.raises(ValuationError, match="damaged"):
        data_oob(x[:100], y[:100], n_models=16, batch_size=8, seed=5, resume_from={**states[0], "oob": "!!"})
    with pytest.raises(ValuationError, match="from 'tmc_shapley'"):
        data_oob(x[:100], y[:100], n_models=16, batch_size=8, seed=5, resume_from={"estimator": "tmc_shapley"})


def logistic_reference(x, y, n_models, batch_size, seed, C=1.0):
    """The logistic model by hand: one scikit-learn LogisticRegression per bootstrap set (duplicates as rows),
    its out-of-bag predictions; a set with one class predicts it."""
    from sklearn.linear_model import LogisticRegression

    n = len(y)
    sets = [idx for k in range(n_models // batch_size) for idx in bootstrap_indices(seed, k, batch_size, n)]
    hits, oob = np.zeros(n), np.zeros(n, dtype=int)
    for s in sets:
        out = np.ones(n, dtype=bool)
        out[s] = False
        if np.unique(y[s]).size < 2:
            pred = np.full(out.sum(), y[s][0])
        else:
            pred = LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(x[s], y[s]).predict(x[out])
        hits[out] += pred == y[out]
        oob += out
    return hits / np.maximum(oob, 1), oob


@pytest.mark.parametrize("classes", [2, 3])
def test_logistic_models_equal_scikit_learn_on_the_same_bootstrap_sets(classes):
    x, y = make_classification(n_samples=150, n_features=4, n_informative=3, n_redundant=0, n_classes=classes,
                               n_clusters_per_class=1, class_sep=1.0, random_state=classes)
    got = data_oob(x, y, n_models=24, batch_size=8, seed=3, model="logistic", C=0.5, chunk_rows=41)
    want, counts = logistic_reference(x, y, 24, 8, seed=3, C=0.5)
    np.testing.assert_array_equal(got.oob_counts, counts)
    # the same models up to the solvers' tolerances: at most one of ~1,300 out-of-bag predictions may differ
    # (a point on a decision boundary)
    assert np.abs(got.values * counts - want * counts).sum() <= 1


def test_logistic_checkpoints_are_their_own():
    x, y = make_classification(n_samples=80, n_features=3, n_informative=2, n_redundant=0, random_state=0)
    states = []
    data_oob(x, y, n_models=16, batch_size=8, seed=1, model="logistic", checkpoint=states.append)
    resumed = data_oob(x, y, n_models=16, batch_size=8, seed=1, model="logistic", resume_from=states[0])
    whole = data_oob(x, y, n_models=16, batch_size=8, seed=1, model="logistic")
    np.testing.assert_array_equal(resumed.values, whole.values)
    with pytest.raises(ValuationError, match="model"):
        data_oob(x, y, n_models=16, batch_size=8, seed=1, resume_from=states[0])  # a tree run
    old = {k: v for k, v in states[0].items() if k != "model"}  # before models: trees
    with pytest.raises(ValuationError, match="model"):
        data_oob(x, y, n_models=16, batch_size=8, seed=1, model="logistic", resume_from=old)
    with pytest.raises(ValuationError, match="model must be one of"):
        data_oob(x, y, model="forest")


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_logistic_models_on_cuda_equal_the_cpu():
    x, y = make_classification(n_samples=500, n_features=5, n_informative=3, n_redundant=0, random_state=4)
    cpu = data_oob(x, y, n_models=32, batch_size=16, seed=2, model="logistic")
    gpu = data_oob(x, y, n_models=32, batch_size=16, seed=2, model="logistic", device="cuda")
    np.testing.assert_array_equal(gpu.oob_counts, cpu.oob_counts)
    assert np.abs(gpu.values * gpu.oob_counts - cpu.values * cpu.oob_counts).sum() <= 2


def test_logistic_models_on_two_local_workers_give_the_same_values():
    """Each worker keeps the task's data on its device across batches; the values are those of one process."""
    x, y = make_classification(n_samples=200, n_features=4, n_informative=3, n_redundant=0, random_state=5)
    one = data_oob(x, y, n_models=32, batch_size=8, seed=4, model="logistic")
    two = data_oob(x, y, n_models=32, batch_size=8, seed=4, model="logistic", executor=LocalExecutor(2))
    np.testing.assert_array_equal(two.oob_counts, one.oob_counts)
    np.testing.assert_array_equal(two.values, one.values)
