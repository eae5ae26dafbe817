r"""What makes a structural disparity trustworthy beyond its point value: a codebook with a proven error bound
(party side), and a bootstrap interval (broker side).

**Codebook** (:func:`quantise`). A party whose graph has more rows than the request's ``codebook`` size k sends
k weighted centroids instead of its rows: k-means (scikit-learn ``KMeans``, k-means++ seeding with the public
fixed ``random_state`` 0, one run, on the rows sorted and merged, so the result does not depend on node order),
each centroid weighing the summed weight of its rows. It also sends ε = Σ_i w_i ‖x_i − c(x_i)‖, the mean
distance of a row to its centroid. Moving every row to its centroid is a transport plan, so
W₁(μ, μ_q) ≤ ε, and by the triangle inequality

    |W₁(μ_b, μ_s) − W₁(μ_b,q, μ_s,q)| ≤ ε_b + ε_s,

so the broker reports the **bracket** [S_q − ε_b − ε_s, S_q + ε_b + ε_s] (clipped at 0), which contains the
exact S for certain. A party at or below k rows sends its rows (ε = 0; S is exact).

**Interval** (:func:`bootstrap_interval`). The broker resamples each side's nodes: a replicate draws n_side
nodes with replacement from the rows it has (multinomial counts with the rows' weights as probabilities, n_side
the party's node count, so a codebook row stands for the nodes it holds), and solves the same exact transport.
W₁ between resampled clouds is biased upwards, so the interval is the *basic* bootstrap
[2S − q_{1−α/2}, 2S − q_{α/2}] of the replicates (α = 1 − confidence), clipped at 0, then widened by the
codebook's ε_b + ε_s on both sides. Above ``INTERVAL_ROWS`` rows a side the replicates are solved on a coarser
codebook of the broker's rows (k-means, as above), with S_c its S: the interval is then
[S − (q_{1−α/2} − S_c), S − (q_{α/2} − S_c)], the replicates' spread around S_c carried over to S.
Replicate j uses the seed sequence (seed, j), so the interval is reproducible and the same for a seller alone or
in a job with others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans

from app.valuation import defaults
from app.valuation.errors import ValuationError
from app.valuation.structural.wasserstein import sorted_cloud

CODEBOOK = defaults.CODEBOOK
KMEANS_RANDOM_STATE = 0
KMEANS_MAX_ITER = 100
REPLICATES = defaults.STRUCTURAL_REPLICATES
# Replicates are solved on at most this many rows a side (a coarser codebook of the rows the broker has): the
# spread of S under resampling, not S itself, is what they estimate, and 50 exact solves of 2,000 × 2,000 would
# take minutes.
INTERVAL_ROWS = 300
CONFIDENCE = defaults.CONFIDENCE


@dataclass(frozen=True)
class Codebook:
    """A party's rows as sent: centroids (or the rows themselves), their weights, and the bound ε."""

    rows: np.ndarray  # (k, d)
    weights: np.ndarray  # (k,), sums to 1
    error: float  # ε = Σ_i w_i ‖x_i − c(x_i)‖ (0 when the rows are sent as they are)
    quantised: bool


def quantise(x: np.ndarray, w: np.ndarray, k: int | None) -> Codebook:
    """At most ``k`` weighted rows standing for the cloud (x, w), with the mean quantisation distance ε."""
    xs, ws = sorted_cloud(x, w)  # equal rows merged: k-means sees each distinct profile once
    if k is None or xs.shape[0] <= k:
        return Codebook(xs, ws, 0.0, False)
    if k < 1:
        raise ValuationError("the codebook needs at least one row")
    km = KMeans(n_clusters=k, init="k-means++", n_init=1, max_iter=KMEANS_MAX_ITER,
                random_state=KMEANS_RANDOM_STATE).fit(xs, sample_weight=ws)
    labels = km.labels_
    centres = km.cluster_centers_
    error = float(np.sum(ws * np.linalg.norm(xs - centres[labels], axis=1)))
    cw = np.bincount(labels, weights=ws, minlength=k)
    keep = cw > 0
    c, cw = sorted_cloud(centres[keep], cw[keep])
    return Codebook(c, cw, error, True)


def bracket(value: float, error: float) -> list[float]:
    """[S − ε, S + ε], clipped at 0: contains the exact S when ε is the two sides' codebook errors."""
    return [max(0.0, value - error), value + error]


def bootstrap_interval(
    solve: Callable[[np.ndarray, np.ndarray], float],
    wb: np.ndarray,
    ws: np.ndarray,
    nb: int,
    ns: int,
    value: float,
    *,
    replicates: int = REPLICATES,
    confidence: float = CONFIDENCE,
    error: float = 0.0,
    seed: int = 0,
    centre: float | None = None,
) -> list[float] | None:
    """The basic-bootstrap interval of S (see module docstring); ``solve(wb*, ws*)`` is S with resampled weights
    on the same rows (possibly a coarser codebook of them, whose own S is ``centre``: the replicates' deviations
    from ``centre`` are applied to ``value``). ``None`` with no replicates."""
    if replicates <= 0:
        return None
    if not 0.5 < confidence < 1:
        raise ValuationError("the interval's confidence must be between 0.5 and 1")
    reps = np.empty(replicates)
    for j in range(replicates):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x57, j]))
        rb = rng.multinomial(max(1, nb), wb / wb.sum()) / max(1, nb)
        rs = rng.multinomial(max(1, ns), ws / ws.sum()) / max(1, ns)
        reps[j] = solve(rb, rs)
    alpha = 1.0 - confidence
    lo_q, hi_q = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    c = value if centre is None else centre
    lo, hi = max(0.0, value - (float(hi_q) - c)), max(0.0, value - (float(lo_q) - c))
    return [float(max(0.0, lo - error)), float(hi + error)]
