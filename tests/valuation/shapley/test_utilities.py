"""Model utilities: U(∅) and missing-class rules, warm-started prefixes, metrics, SGC features."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression, Ridge

from app.valuation.errors import ValuationError
from app.valuation.shapley.base import Utility
from app.valuation.shapley.metrics import METRICS, encode_labels, score
from app.valuation.shapley.utilities import ModelConfig, ModelUtility


def task(seed: int, n: int = 40, m: int = 30, d: int = 3, n_classes: int = 2):
    rng = np.random.default_rng(seed)
    beta = rng.normal(size=(d, n_classes)) * 2

    def draw(k):
        x = rng.normal(size=(k, d))
        return x, np.argmax(x @ beta + rng.gumbel(size=(k, n_classes)), axis=1)

    return (*draw(n), *draw(m))


def permutations(p: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=g) for _ in range(p)])


# ---------------------------------------------------------------------------------------------- warm starts


@pytest.mark.parametrize("n_classes", [2, 3])
def test_warm_started_prefixes_equal_cold_values(n_classes):
    x, y, xv, yv = task(n_classes, n_classes=n_classes)
    u = ModelUtility(x, y, xv, yv, batch_size=12)  # 5 permutations → 2 lengths per group: several groups
    perms = permutations(5, 40)
    warm = u.prefix_values(perms, 0, 41)
    cold = Utility.prefix_values(u, perms, 0, 41)
    torch.testing.assert_close(warm, cold, atol=1e-12, rtol=0)
    assert u.stats["not_converged"] == 0


@pytest.mark.parametrize("n_classes", [2, 3])
def test_ragged_prefixes_equal_cold_values(n_classes):
    """Every permutation its own range of prefix lengths (what TMC asks for): the warm-started values equal
    one cold fit per prefix; a later call continues each permutation from where it stopped."""
    x, y, xv, yv = task(20 + n_classes, n_classes=n_classes)
    u = ModelUtility(x, y, xv, yv, batch_size=16)
    perms = permutations(6, 40, seed=3)
    starts = torch.tensor([1, 1, 5, 9, 1, 30])
    stops = torch.tensor([7, 2, 11, 9, 40, 41])
    got = u.ragged_prefix_values(perms, starts, stops)
    cold = Utility.ragged_prefix_values(u, perms, starts, stops)
    assert got.shape == (6, 39) and torch.equal(got.isnan(), cold.isnan())
    assert torch.equal(got.isnan(), torch.arange(39)[None, :] >= (stops - starts)[:, None])
    torch.testing.assert_close(got.nan_to_num(-1), cold.nan_to_num(-1), atol=1e-12, rtol=0)
    for p in range(6):  # and the plain per-prefix values
        want = Utility.prefix_values(u, perms[p : p + 1], int(starts[p]), int(stops[p]))[0]
        torch.testing.assert_close(got[p, : int(stops[p] - starts[p])], want, atol=1e-12, rtol=0)
    keep = torch.tensor([4, 0, 2])
    more = u.ragged_prefix_values(perms[keep], stops[keep], torch.tensor([40, 12, 20]))
    want = Utility.ragged_prefix_values(u, perms[keep], stops[keep], torch.tensor([40, 12, 20]))
    torch.testing.assert_close(more.nan_to_num(-1), want.nan_to_num(-1), atol=1e-12, rtol=0)


def test_prefix_calls_continue_when_permutations_drop_out():
    """The estimator calls block after block and drops truncated permutations in between."""
    x, y, xv, yv = task(7, n_classes=3)
    u = ModelUtility(x, y, xv, yv)
    perms = permutations(6, 40, seed=1)
    first = u.prefix_values(perms, 1, 15)
    keep = torch.tensor([4, 0, 3])
    second = u.prefix_values(perms[keep], 15, 40)
    cold = Utility.prefix_values(u, perms, 1, 40)
    torch.testing.assert_close(first, cold[:, :14], atol=1e-12, rtol=0)
    torch.testing.assert_close(second, cold[keep, 14:], atol=1e-12, rtol=0)


def test_values_match_sklearn_models():
    x, y, xv, yv = task(8, n_classes=3)
    u = ModelUtility(x, y, xv, yv, C=0.5)
    rng = np.random.default_rng(0)
    masks = rng.random((6, 40)) < 0.6
    got = u.values(torch.tensor(masks)).numpy()
    for b, rows in enumerate(masks):
        assert len(set(y[rows])) == 3
        pred = LogisticRegression(C=0.5, tol=1e-10, max_iter=5000).fit(x[rows], y[rows]).predict(xv)
        assert got[b] == pytest.approx(skm.accuracy_score(yv, pred), abs=1e-12)


# ------------------------------------------------------------------------------------ U(∅) and missing classes


@pytest.mark.parametrize("metric", ["accuracy", "balanced_accuracy", "f1"])
def test_empty_coalition_without_base_is_the_validation_majority(metric):
    x, y, xv, yv = task(9, n_classes=3)
    u = ModelUtility(x, y, xv, yv, metric=metric)
    majority = np.bincount(yv, minlength=3).argmax()
    const = np.full_like(yv, majority)
    ref = {
        "accuracy": skm.accuracy_score,
        "balanced_accuracy": skm.balanced_accuracy_score,
        "f1": lambda a, b: skm.f1_score(a, b, average="macro", zero_division=0),
    }[metric](yv, const)
    assert u.empty_value() == pytest.approx(ref, abs=1e-12)
    if metric == "accuracy":
        assert u.empty_value() == pytest.approx(np.mean(yv == majority))


def test_empty_coalition_with_a_base_set_is_the_base_model():
    x, y, xv, yv = task(10, n=60)
    xb, yb = x[:15], y[:15]
    u = ModelUtility(x[15:], y[15:], xv, yv, x_base=xb, y_base=yb)
    pred = LogisticRegression(tol=1e-10, max_iter=5000).fit(xb, yb).predict(xv)
    assert u.empty_value() == pytest.approx(skm.accuracy_score(yv, pred), abs=1e-12)
    full = LogisticRegression(tol=1e-10, max_iter=5000).fit(x, y).predict(xv)
    assert u.full_value() == pytest.approx(skm.accuracy_score(yv, full), abs=1e-12)


def test_single_class_coalitions():
    """Issue 13: the default is the literature's rule (a one-class coalition scores as the validation majority);
    the rule before it, predicting the coalition's one class, is ``missing_classes="fit_present"``."""
    x, y, xv, yv = task(11, n_classes=3)
    one_class = torch.zeros((2, 40), dtype=torch.bool)
    one_class[0, np.flatnonzero(y == 1)[:3]] = True  # only class 1
    one_class[1, np.flatnonzero(y == 2)[:1]] = True  # one point of class 2
    majority_rate = np.bincount(yv).max() / len(yv)
    assert np.argmax(np.bincount(yv)) == 0  # so the two rules differ here
    u = ModelUtility(x, y, xv, yv)
    np.testing.assert_allclose(u.values(one_class).numpy(), majority_rate)
    old = ModelUtility(x, y, xv, yv, missing_classes="fit_present")
    np.testing.assert_allclose(old.values(one_class).numpy(), [np.mean(yv == 1), np.mean(yv == 2)])
    strict = ModelUtility(x, y, xv, yv, missing_classes="constant")
    np.testing.assert_allclose(strict.values(one_class).numpy(), majority_rate)


def test_missing_class_rules_differ_when_two_of_three_classes_are_present():
    """Two of three classes present: scikit-learn's model on those rows with the same C (issue 13: the
    reference used to be C=2, the 2-way softmax that penalised both columns; at C=0.05 the two differ)."""
    x, y, xv, yv = task(12, n_classes=3)
    two = torch.tensor(y != 0)[None]
    for c in (1.0, 0.05):
        u = ModelUtility(x, y, xv, yv, C=c)
        clf = LogisticRegression(C=c, tol=1e-10, max_iter=5000).fit(x[y != 0], y[y != 0])
        assert u.values(two).item() == pytest.approx(skm.accuracy_score(yv, clf.predict(xv)), abs=1e-12)
    doubled = LogisticRegression(C=0.1, tol=1e-10, max_iter=5000).fit(x[y != 0], y[y != 0])
    assert u.values(two).item() != pytest.approx(skm.accuracy_score(yv, doubled.predict(xv)), abs=1e-3)
    strict = ModelUtility(x, y, xv, yv, missing_classes="constant")
    assert strict.values(two).item() == pytest.approx(np.bincount(yv).max() / len(yv))
    assert u.stats["constant_predictor"] == 0 and strict.stats["constant_predictor"] == 1


def test_one_class_rule_on_an_imbalanced_task():
    """The validation set is 80% class 0; a coalition of class-1 points alone scores 0.8 by default (the
    validation majority), 0.2 under the old rule (it predicted class 1)."""
    x, y, xv, _ = task(30, n_classes=2)
    yv = (np.arange(len(xv)) % 5 == 0).astype(int)  # 20% class 1
    only_ones = torch.tensor(y == 1)[None]
    assert ModelUtility(x, y, xv, yv).values(only_ones).item() == pytest.approx(0.8)
    assert ModelUtility(x, y, xv, yv, missing_classes="fit_present").values(only_ones).item() == pytest.approx(0.2)
    assert ModelUtility(x, y, xv, yv).empty_value() == pytest.approx(0.8)


def test_string_labels_and_class_union():
    x, y, xv, yv = task(13, n_classes=3)
    names = np.array(["cat", "dog", "eel"])
    masks = torch.tensor(np.random.default_rng(1).random((5, 40)) < 0.5)
    a = ModelUtility(x, y, xv, yv).values(masks)
    b = ModelUtility(x, names[y], xv, names[yv]).values(masks)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    classes, (c1, c2) = encode_labels(["b", "a"], ["c", "a"])
    assert classes.tolist() == ["a", "b", "c"] and c1.tolist() == [1, 0] and c2.tolist() == [2, 0]


# ------------------------------------------------------------------------------------------------ regression


def test_ridge_utility():
    rng = np.random.default_rng(14)
    x, xv = rng.normal(size=(30, 3)), rng.normal(size=(20, 3))
    beta = rng.normal(size=3)
    y, yv = x @ beta + rng.normal(size=30), xv @ beta + rng.normal(size=20)
    masks = np.random.default_rng(2).random((4, 30)) < 0.5
    masks[0] = False
    for metric in ["r2", "neg_mse"]:
        u = ModelUtility(x, y, xv, yv, model="ridge", metric=metric, alpha=0.3)
        got = u.values(torch.tensor(masks)).numpy()
        if metric == "r2":
            assert got[0] == 0.0
        else:
            assert got[0] == pytest.approx(-np.var(yv))
        for b in range(1, 4):
            pred = Ridge(alpha=0.3).fit(x[masks[b]], y[masks[b]]).predict(xv)
            ref = skm.r2_score(yv, pred) if metric == "r2" else -skm.mean_squared_error(yv, pred)
            assert got[b] == pytest.approx(ref, abs=1e-10)


def test_mlp_and_knn_utilities_fall_back_to_values_for_prefixes():
    x, y, xv, yv = task(15)
    perms = permutations(2, 40)
    for model in ["mlp", "knn"]:
        u = ModelUtility(x, y, xv, yv, model=model, epochs=20)
        torch.testing.assert_close(u.prefix_values(perms, 0, 41), Utility.prefix_values(u, perms, 0, 41))
        assert u.empty_value() == pytest.approx(np.bincount(yv).max() / len(yv))


# --------------------------------------------------------------------------------------------------- metrics


def test_metrics_match_sklearn():
    rng = np.random.default_rng(16)
    y = rng.integers(0, 4, 50)
    y[:4] = [0, 1, 2, 3]
    pred = rng.integers(0, 5, (6, 50))  # class 4 predicted but never true
    pred[1] = 0  # constant prediction
    pred[2] = y
    yt, pt = torch.tensor(y), torch.tensor(pred)
    refs = {
        "accuracy": skm.accuracy_score,
        "balanced_accuracy": skm.balanced_accuracy_score,
        "f1": lambda a, b: skm.f1_score(a, b, average="macro", zero_division=0),
    }
    with warnings.catch_warnings():  # sklearn warns about classes predicted but never true
        warnings.simplefilter("ignore")
        for name, ref in refs.items():
            got = score(name, pt, yt, 5).numpy()
            want = [ref(y, p) for p in pred]
            np.testing.assert_allclose(got, want, atol=1e-12, err_msg=name)
    yr = rng.normal(size=50)
    pr = yr[None] + rng.normal(size=(3, 50))
    np.testing.assert_allclose(
        score("r2", torch.tensor(pr), torch.tensor(yr)).numpy(), [skm.r2_score(yr, p) for p in pr], atol=1e-12
    )
    np.testing.assert_allclose(
        score("neg_mse", torch.tensor(pr), torch.tensor(yr)).numpy(),
        [-skm.mean_squared_error(yr, p) for p in pr],
        atol=1e-12,
    )
    const = torch.ones(5, dtype=torch.float64)
    assert score("r2", torch.stack([const, const + 1]), const).tolist() == [1.0, 0.0]
    assert set(METRICS) == {"accuracy", "balanced_accuracy", "f1", "r2", "neg_mse"}


# ------------------------------------------------------------------------------------------- configuration


def test_config_validation_and_record():
    x, y, xv, yv = task(17)
    with pytest.raises(ValuationError):
        ModelUtility(x, y, xv, yv, model="ridge", metric="accuracy")
    with pytest.raises(ValuationError):
        ModelUtility(x, y, xv, yv, model="logistic", metric="r2")
    with pytest.raises(ValuationError):
        ModelUtility(x, y, xv, yv, metric="auc")
    with pytest.raises(ValuationError):
        ModelUtility(x, y, xv[:, :2], yv)
    threads = torch.get_num_threads()
    ModelUtility(x, y, xv, yv, threads=threads + 1).full_value()
    assert torch.get_num_threads() == threads
    u = ModelUtility(x, y, xv, yv, config=ModelConfig(C=2.0), seed=5)
    rec = u.describe()
    assert rec["C"] == 2.0 and rec["seed"] == 5 and rec["metric"] == "accuracy" and rec["resolved_solver"] == "newton"
    assert rec["classes"] == [0, 1] and rec["n_players"] == 40


# ------------------------------------------------------------------------------------------- graphs (SGC)


def test_sgc_features_equal_the_dense_formula():
    pytest.importorskip("torch_geometric")
    from app.valuation.shapley.graph_features import sgc_features, sgc_utility

    rng = np.random.default_rng(18)
    n = 7
    x = rng.normal(size=(n, 3))
    # one-way edges, a duplicate, a self-loop, weights, and an isolated node (6)
    edges = np.array([[0, 1, 1, 2, 3, 4, 4, 5, 2], [1, 2, 2, 3, 4, 0, 4, 3, 0]])
    weight = np.array([1.0, 2.0, 3.0, 0.5, 1.0, 1.5, 9.0, 2.0, 0.25])
    a = np.zeros((n, n))
    for (u, v), w in zip(edges.T, weight, strict=True):
        if u != v:
            a[u, v] = a[v, u] = max(a[u, v], w)
    a_hat = a + np.eye(n)
    dinv = 1 / np.sqrt(a_hat.sum(1))
    a_hat = dinv[:, None] * a_hat * dinv[None, :]
    for k in [0, 1, 3]:
        feats, report = sgc_features(x, edges, k, edge_weight=weight, return_report=True)
        np.testing.assert_allclose(feats.numpy(), np.linalg.matrix_power(a_hat, k) @ x, atol=1e-12)
    assert report["self_loops_dropped"] == 1 and report["duplicates_merged"] == 1

    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    u = sgc_utility(x, edges, y, seller_nodes=[0, 1, 2, 3], val_nodes=[4, 5, 6], k=2, edge_weight=weight)
    assert u.n_players == 4 and u.describe()["graph_features"]["k"] == 2
    assert u.values(torch.ones((1, 4), dtype=torch.bool)).shape == (1,)


# ----------------------------------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_agree():
    x, y, xv, yv = task(19, n_classes=3)
    perms = permutations(4, 40)
    cpu = ModelUtility(x, y, xv, yv).prefix_values(perms, 0, 41)
    gpu = ModelUtility(x, y, xv, yv, device="cuda").prefix_values(perms.cuda(), 0, 41)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-12, rtol=0)
    for model in ["ridge"]:
        r = np.random.default_rng(0).normal(size=40)
        rv = np.random.default_rng(1).normal(size=30)
        masks = torch.rand((8, 40), generator=torch.Generator().manual_seed(0)) < 0.5
        c = ModelUtility(x, r, xv, rv, model=model).values(masks)
        g = ModelUtility(x, r, xv, rv, model=model, device="cuda").values(masks.cuda())
        torch.testing.assert_close(g.cpu(), c, atol=1e-9, rtol=0)
