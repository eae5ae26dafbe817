"""Values a buyer can trust: 95% intervals that cover, a ranking that is not fooled by small sellers, decoys that
hide the real directions, and the share files carrying what the broker needs."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from app.shares.tables import (
    read_private,
    read_request,
    read_seller_share,
    write_private,
    write_request,
    write_seller_share,
)
from app.valuation.featural import (
    NOISE_FLOOR,
    buyer_share,
    replicate_bounds,
    scores_from_spectra,
    seller_share,
)
from app.valuation.relevance_diversity import Options, rank_results, score_share, value_sellers
from tests.valuation.test_featural import PAPER_BUYER_COV, PAPER_SELLER_COV, blocks_of, population_scores

ROOT = Path(__file__).resolve().parents[2]


def interval_of(b: np.ndarray, s: np.ndarray, **kw) -> dict[str, list[float]]:
    _, [res] = value_sellers(blocks_of(b), [blocks_of(s)], Options(vendi=False, **kw))
    return res.intervals()


# --- intervals cover the population values ---------------------------------------------------------------------


def test_intervals_cover_the_paper_example_in_at_least_18_of_20_draws():
    """The paper's 2-D Gaussians (population R = 0.508, D = 0.491 from the covariances): a fixed buyer of 100,000
    rows (so that its own sampling error, common to all draws, is small), 20 independent sellers of 500 rows."""
    rng = np.random.default_rng(2024)
    rel_pop, div_pop = population_scores()
    b = rng.multivariate_normal([3.0, -1.0], PAPER_BUYER_COV, 100_000)
    covered_r = covered_d = 0
    for draw in range(20):
        s = rng.multivariate_normal([0.0, 5.0], PAPER_SELLER_COV, 500)
        iv = interval_of(b, s, scaling="none", seed=draw)
        covered_r += iv["relevance"][0] <= rel_pop <= iv["relevance"][1]
        covered_d += iv["diversity"][0] <= div_pop <= iv["diversity"][1]
        assert iv["relevance"][1] - iv["relevance"][0] < 0.15  # informative, not [0, 1]
    assert covered_r >= 18 and covered_d >= 18, (covered_r, covered_d)


def test_intervals_cover_r1_d0_for_sellers_drawn_like_the_buyer():
    """Same distribution (population R = 1, D = 0 exactly): the kink of R and D at λ̂ = λ, where a plain
    percentile bootstrap never covers R = 1 (every replicate has R < 1)."""
    rng = np.random.default_rng(7)
    m = rng.normal(size=(5, 5))
    cov = m @ m.T / 5 + np.eye(5) * 0.2
    b = rng.multivariate_normal(np.zeros(5), cov, 5_000)
    covered_r = covered_d = 0
    for draw in range(20):
        s = rng.multivariate_normal(np.ones(5), cov, 400)
        iv = interval_of(b, s, seed=draw)
        covered_r += iv["relevance"][1] == 1.0
        covered_d += iv["diversity"][0] == 0.0
    assert covered_r >= 18 and covered_d >= 18, (covered_r, covered_d)


@pytest.mark.parametrize("scaling", ["own", "none", "buyer"])
def test_identical_data_gives_d0_r1_and_intervals_containing_them(scaling):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, 6)) @ rng.normal(size=(6, 6)) + 5
    _, [res] = value_sellers(blocks_of(x, 64), [blocks_of(x, 250)], Options(scaling=scaling, decoys=6, vendi=False))
    assert res.scores.diversity == 0.0 and res.scores.relevance == pytest.approx(1.0, abs=1e-12)
    iv = res.intervals()
    assert iv["relevance"][1] == 1.0 and iv["diversity"][0] == 0.0
    assert iv["score"][0] <= res.score <= iv["score"][1]


def test_replicate_bounds_of_exactly_equal_replicates_are_points():
    lam = torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64)
    rep = lam * (1 + 0.05 * torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    b = replicate_bounds(lam, lam, rep, rep, torch.full((3,), 1 / 3, dtype=torch.float64))
    assert b.relevance() == (1.0, 1.0) and b.diversity() == (0.0, 0.0)


def test_far_apart_spectra_give_intervals_around_the_point_values():
    """Every component resolved: the interval is the basic bootstrap of smooth functions, and contains the point
    estimate when the replicates are unbiased."""
    g = torch.Generator().manual_seed(1)
    lam = torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)
    lam_hat = torch.tensor([1.0, 1.5, 3.0], dtype=torch.float64)
    noise = lambda: 1 + 0.02 * torch.randn(400, 3, dtype=torch.float64, generator=g)  # noqa: E731
    w = torch.full((3,), 1 / 3, dtype=torch.float64)
    b = replicate_bounds(lam, lam_hat, lam * noise(), lam_hat * noise(), w)
    point = scores_from_spectra(lam, lam_hat)
    assert bool(b.resolved.all())
    lo, hi = b.relevance()
    assert lo < point.relevance < hi and hi - lo < 0.1
    lo, hi = b.diversity()
    assert lo < point.diversity < hi and hi - lo < 0.1


# --- ranking that accounts for uncertainty ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_a_5_row_seller_drawn_like_the_buyer_does_not_rank_above_a_400_row_one(seed):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(4, 4))
    cov = m @ m.T / 4 + np.eye(4) * 0.3
    b = rng.multivariate_normal(np.zeros(4), cov, 2_000)
    small = rng.multivariate_normal(np.zeros(4), cov, 5)
    large = rng.multivariate_normal(np.zeros(4), cov, 400)
    for alpha in (0.0, 0.25, 0.5, 0.75):  # at α = 1 both lower bounds are 0 (docs: ranking), ties go by the point
        _, (rs, rl) = value_sellers(blocks_of(b), [blocks_of(small), blocks_of(large)],
                                    Options(alpha=alpha, vendi=False, seed=seed))
        assert rs.rank > rl.rank, (alpha, rs.intervals(), rl.intervals())
        assert rs.intervals()["score"][1] - rs.intervals()["score"][0] > rl.intervals()["score"][1] - \
            rl.intervals()["score"][0]


def test_point_ranking_is_still_available_and_recorded():
    rng = np.random.default_rng(13)
    b = rng.normal(size=(2000, 6)) @ rng.normal(size=(6, 6))
    opts = Options(ranking="point", vendi=False)
    _, results = value_sellers(blocks_of(b), [blocks_of(b[:1000]), blocks_of(rng.normal(size=(500, 6)))], opts)
    assert [r.rank for r in results] == ([1, 2] if results[0].score > results[1].score else [2, 1])
    assert "point score" in opts.as_dict()["ranking"]
    assert "lower end" in Options().as_dict()["ranking"]


def test_sellers_too_small_to_value_are_named_and_ranked_last():
    rng = np.random.default_rng(4)
    b = rng.normal(size=(1000, 6)) @ rng.normal(size=(6, 6))
    tiny = b[:3]  # 3 rows for 6 kept components: its centred covariance has rank 2
    _, (rt, rl) = value_sellers(blocks_of(b), [blocks_of(tiny), blocks_of(b[500:])], Options(vendi=False))
    assert rt.too_small and rt.rank == 2 and rl.rank == 1
    assert any("too small to value" in n and "3 rows" in n for n in rt.notes)
    assert rt.as_dict()["intervals"] == {"relevance": [0.0, 1.0], "diversity": [0.0, 1.0], "score": [0.0, 1.0]}


def test_readme_example_a_2_row_excerpt_ranks_last_with_default_settings(tmp_path):
    """The issue's example: with default settings a 2-row excerpt of seller_like.csv used to rank first."""
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_breast_cancer.py"), str(tmp_path)], check=True,
                   capture_output=True)
    read = lambda name: pd.read_csv(tmp_path / f"{name}.csv").drop(columns="label").to_numpy()  # noqa: E731
    buyer, like = read("buyer"), read("seller_like")
    sellers = [like, read("seller_malignant"), read("seller_noise"), like[:2]]
    _, results = value_sellers(blocks_of(buyer), [blocks_of(s) for s in sellers], Options(vendi=False))
    assert results[3].rank == 4 and results[3].too_small
    assert results[3].score > results[0].score  # the point score alone would have put it above the seller it came from
    point = [r.score for r in results]
    rank_results(results)  # idempotent
    assert [r.score for r in results] == point


# --- share files -----------------------------------------------------------------------------------------------


def test_blind_share_files_equal_hosted_including_intervals(tmp_path):
    rng = np.random.default_rng(21)
    mix = rng.normal(size=(7, 7))
    b = rng.normal(size=(800, 7)) @ mix
    sellers = [rng.normal(size=(300, 7)) @ mix, rng.normal(size=(200, 7)), b[:6]]
    opts = Options(decoys=7, seed=3, vendi=False)
    _, hosted = value_sellers(blocks_of(b, 100), [blocks_of(s, 100) for s in sellers], opts)

    request, private = buyer_share(blocks_of(b, 100), decoys=7, seed=3)
    write_request(tmp_path / "b.request.npz", request)
    write_private(tmp_path / "b.private.npz", private)
    req = read_request(tmp_path / "b.request.npz")
    assert (req.replicates, req.replicate_groups) == (request.replicates, request.replicate_groups)
    blind = []
    for i, s in enumerate(sellers):
        write_seller_share(tmp_path / f"s{i}.npz", seller_share(blocks_of(s, 100), req))
        blind.append(score_share(read_private(tmp_path / "b.private.npz"), read_seller_share(tmp_path / f"s{i}.npz"),
                                 opts))
    rank_results(blind)
    for h, bl in zip(hosted, blind, strict=True):
        assert bl.as_dict() | {"constant_columns": [], "vendi_score": None} == h.as_dict() | {
            "constant_columns": [], "vendi_score": None}
    with np.load(tmp_path / "s0.npz") as f:
        assert f["lam_hat_replicates"].shape == (request.replicates, request.directions.shape[1])
    with np.load(tmp_path / "b.private.npz") as f:
        assert f["eigenvalue_replicates"].shape == (request.replicates, private.components)


def test_shares_without_replicates_still_score_and_say_so(tmp_path):
    rng = np.random.default_rng(5)
    b = rng.normal(size=(500, 4)) @ rng.normal(size=(4, 4))
    request, private = buyer_share(blocks_of(b), replicates=0)
    assert private.eigenvalue_replicates is None and request.replicates == 0
    share = seller_share(blocks_of(b[:200]), request)
    assert share.lam_hat_replicates is None
    res = score_share(private, share, Options())
    assert res.intervals() is None and any("no intervals" in n for n in res.notes)


def test_seller_replicates_are_the_same_on_the_projected_path_for_buyer_scaling():
    """With the buyer's centre and scale fixed the projected path's replicates are exact, not an approximation."""
    rng = np.random.default_rng(9)
    b = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12)) + 3
    s = rng.normal(size=(250, 12)) @ rng.normal(size=(12, 12)) - 3
    request, _ = buyer_share(blocks_of(b), scaling="buyer")
    gram = seller_share(blocks_of(s, 64), request)
    projected = seller_share(blocks_of(s, 64), request, gram_max_dim=4)
    assert projected.lam_hat_replicates.numpy() == pytest.approx(gram.lam_hat_replicates.numpy(), rel=1e-9)


def test_replicates_do_not_depend_on_the_block_size():
    rng = np.random.default_rng(8)
    b = rng.normal(size=(1000, 5)) @ rng.normal(size=(5, 5)) + 1e3
    s = rng.normal(size=(700, 5)) @ rng.normal(size=(5, 5))
    r1, p1 = buyer_share(blocks_of(b, 1000))
    r2, p2 = buyer_share(blocks_of(b, 37))
    assert p1.eigenvalue_replicates.numpy() == pytest.approx(p2.eigenvalue_replicates.numpy(), rel=1e-9)
    assert seller_share(blocks_of(s, 700), r1).lam_hat_replicates.numpy() == pytest.approx(
        seller_share(blocks_of(s, 50), r1).lam_hat_replicates.numpy(), rel=1e-9)


# --- decoys ------------------------------------------------------------------------------------------------------


def direction_features(v: np.ndarray) -> np.ndarray:
    """Everything an attacker can compute per direction from the request alone, without knowing which column is
    which: position, norm, its row of the Gram matrix, statistics of its entries, and how close its sorted entries
    come to another direction's."""
    d, m = v.shape
    gram = v.T @ v
    off = np.abs(gram - np.diag(np.diag(gram)))
    a = np.abs(v)
    p = v**2 / (v**2).sum(0)
    profile = np.sort(a, axis=0)
    twin = np.linalg.norm(profile[:, :, None] - profile[:, None, :], axis=0) + np.eye(m) * 1e9
    return np.column_stack([
        np.arange(m),  # order
        np.linalg.norm(v, axis=0),  # norm
        off.max(0), (off**2).sum(0), (off < 1e-9).sum(0),  # Gram
        d * (v**4).sum(0), a.max(0) * math.sqrt(d),  # kurtosis, largest entry
        np.abs(v.sum(0)) / math.sqrt(d), np.abs((v > 0).mean(0) - 0.5),  # alignment with 1, sign balance
        -(p * np.log(np.maximum(p, 1e-300))).sum(0), a.sum(0) / math.sqrt(d),  # entropy, L1
        twin.min(0),  # nearest sorted-entry profile
    ])


def attack_auc(requests: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """(largest single-feature AUC, either direction; cross-validated AUC of a logistic regression on the
    features and their squares, requests kept whole across folds)."""
    x = np.concatenate([direction_features(v) for v, _ in requests])
    y = np.concatenate([decoy for _, decoy in requests]).astype(int)
    groups = np.concatenate([np.full(len(decoy), i) for i, (_, decoy) in enumerate(requests)])
    single = max(max(a, 1 - a) for a in (roc_auc_score(y, x[:, j]) for j in range(x.shape[1])))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    p = cross_val_predict(model, np.column_stack([x, x**2]), y, groups=groups, cv=GroupKFold(5),
                          method="predict_proba")[:, 1]
    return single, roc_auc_score(y, p)


def breast_cancer_buyer() -> np.ndarray:
    from sklearn.datasets import load_breast_cancer

    x = load_breast_cancer().data
    return x[np.random.default_rng(0).permutation(len(x))[: len(x) // 2]]


def test_decoys_cannot_be_told_from_real_directions_by_the_request_alone():
    """Real data with tell-tale eigenvectors (breast cancer: the first has all entries of one sign, others are
    localised on collinear columns), 40 requests with different seeds."""
    b = breast_cancer_buyer()
    requests = []
    for seed in range(40):
        request, private = buyer_share(blocks_of(b), threshold=0.05, threshold_mode="relative", decoys=14, seed=seed,
                                       replicates=0)
        assert private.components == 7 and request.directions.shape[1] == 21
        requests.append((request.directions.numpy(), (private.slots == -1).numpy()))
    single, model = attack_auc(requests)
    assert single <= 0.6 and model <= 0.6, (single, model)


def test_the_attack_finds_random_unit_decoys():
    """The same attack against the old decoys (random unit vectors mixed in): it is not toothless."""
    b = breast_cancer_buyer()
    request, private = buyer_share(blocks_of(b), threshold=0.05, threshold_mode="relative", replicates=0)
    u = request.directions.numpy()
    requests = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        noise = rng.normal(size=(u.shape[0], 14))
        v = np.concatenate([u, noise / np.linalg.norm(noise, axis=0)], axis=1)
        order = rng.permutation(v.shape[1])
        requests.append((v[:, order], (np.arange(v.shape[1]) >= u.shape[1])[order]))
    single, model = attack_auc(requests)
    assert single > 0.9 and model > 0.9


def test_decoy_layers_keep_the_request_orthonormal_within_each_layer_and_respect_constant_columns():
    rng = np.random.default_rng(6)
    b = np.column_stack([rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5)), np.full(400, 2.0)])
    request, private = buyer_share(blocks_of(b), decoys=3, seed=1)
    k = private.components
    v = request.directions
    assert v.shape[1] == 2 * k  # 3 decoys round up to one whole layer of k
    assert any("not 3" in n for n in private.notes)
    assert torch.allclose(v.norm(dim=0), torch.ones(2 * k, dtype=torch.float64))
    assert float(v[5].abs().max()) < 1e-12  # the constant column is zero in every direction
    real = v[:, private.slots >= 0]
    decoy = v[:, private.slots == -1]
    for layer in (real, decoy):
        assert torch.allclose(layer.T @ layer, torch.eye(k, dtype=torch.float64), atol=1e-12)
    # the same multiset of entries: a decoy layer is the real one with its coordinates shuffled
    assert np.sort(np.abs(decoy.numpy()).ravel()) == pytest.approx(np.sort(np.abs(real.numpy()).ravel()))


def test_decoys_leave_the_scores_and_intervals_unchanged():
    rng = np.random.default_rng(11)
    b = rng.normal(size=(900, 8)) @ rng.normal(size=(8, 8))
    s = rng.normal(size=(500, 8)) @ rng.normal(size=(8, 8))
    plain = value_sellers(blocks_of(b), [blocks_of(s)], Options(vendi=False, seed=4))[1][0]
    decoyed = value_sellers(blocks_of(b), [blocks_of(s)], Options(vendi=False, decoys=16, seed=4))[1][0]
    assert decoyed.scores.relevance == pytest.approx(plain.scores.relevance, rel=1e-12)
    assert decoyed.scores.diversity == pytest.approx(plain.scores.diversity, rel=1e-12)
    for key, (lo, hi) in plain.intervals().items():
        assert decoyed.intervals()[key] == pytest.approx([lo, hi], rel=1e-9, abs=NOISE_FLOOR)
