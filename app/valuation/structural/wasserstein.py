r"""Structural disparity S = W₁(E_b, E_s) (METHODS.md section 2, steps 4–5): the broker's part.

Each side is a weighted point cloud: the rows of an embedding E with weights summing to one (uniform 1/n for
one graph; 1/(G·n_g) per node for a collection of G graphs, so every graph counts equally). The ground cost is
Euclidean. Solvers (every seller of one job gets the same one: :func:`choose_solver` looks at all pairs):

- ``exact`` (``auto`` picks it while every pair has n_b·n_s ≤ ``exact_max_pairs`` = 2.5·10⁷): POT ``ot.emd2``
  on the full cost matrix. The cost matrix is ``torch.cdist(..., compute_mode="donot_use_mm_for_euclid_dist")``,
  the same Euclidean metric as ``ot.dist(..., metric="euclidean")`` but computed from differences: ``ot.dist``
  expands ‖a‖² + ‖b‖² − 2ab, which leaves ~1e-8 instead of 0 between identical points.
- ``sliced`` (``auto``'s choice beyond the threshold, unless ``approx="sinkhorn"``): POT
  ``ot.sliced_wasserstein_distance(p=1)`` with ``n_projections`` (default 256) seeded directions, divided by
  κ_d = E|⟨θ, u⟩| (θ uniform on the sphere, u a unit vector; κ_64 ≈ 0.0997), which puts it in W₁'s units:
  κ_d·W₁ ≥ SW₁ always, so the calibrated value is (up to Monte-Carlo error of the projections) a *lower bound*
  on W₁, equal to it for a pure translation. The raw SW₁ is recorded too. Memory O(n·d), time O(P·n log n).
  It is *not* on the exact solver's scale for clouds that differ in shape (measured 0.14–0.25 × W₁ on
  300–500-node embeddings), which is why one job never mixes solvers.
- ``sinkhorn``: POT ``ot.sinkhorn2(method="sinkhorn_log")`` (log-domain, stable for small ε; runs on the
  tensors' device, so on a GPU when the embeddings are there), ε = ``sinkhorn_reg``·median(ground cost)
  (default 0.01). It returns ⟨T_ε, M⟩ ≥ W₁ (the entropic plan's transport cost, no entropy term); the bias
  shrinks with ε (measured: +1–2 % at 0.01, +2–4 % at 0.02, +3–8 % at 0.05 on 400-node embeddings). On a CPU
  it is slow when the plan is close to a permutation (thousands of iterations), hence not the default.
  Needs the n_b × n_s cost matrix, so each side is first subsampled (seeded, without
  replacement, probability ∝ weight, then equal weights) until n_b·n_s ≤ ``sinkhorn_max_pairs``.

Before solving, each cloud's rows are sorted lexicographically (with their weights), and the pair is put in an
order fixed by the data (size, then a digest), so S does not depend on row order or on which side is the buyer:
S(a, b) = S(b, a) bit for bit. Equal rows are merged (their weights summed), so one measure written two ways
(a collection listing each graph twice) has one form. Two identical measures (same rows, weights equal to
1e-12 relative) give S = 0 exactly: a metric is zero on equal measures, and no solver's rounding or blur is
reported as disparity.

``structural_similarity`` = exp(−S / s₀), s₀ the buyer's median intra-embedding distance (weighted median over
pairs i < j with weights w_i·w_j; on a seeded subsample of ``s0_max_nodes`` = 2,000 rows above that). With
s₀ = 0 (all buyer rows equal) the similarity is 1 when S = 0, else 0.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import ot
import torch
from scipy.special import gammaln

from app.valuation.errors import ValuationError

Solver = Literal["auto", "exact", "sinkhorn", "sliced"]
SOLVERS = ("auto", "exact", "sinkhorn", "sliced")

EXACT_MAX_PAIRS = 25_000_000
EMD_MAX_ITER = 1_000_000_000
N_PROJECTIONS = 256
SINKHORN_REG = 0.01
SINKHORN_MAX_ITER = 5_000
SINKHORN_TOL = 1e-5
SINKHORN_MAX_PAIRS = 25_000_000
S0_MAX_NODES = 2_000
# Equal supports whose weights agree to this relative precision are the same measure (rounding of 1/(G·n_g)).
WEIGHT_RTOL = 1e-12
# Sliced: project in chunks so that at most this many projected values live at once (per side).
SLICED_CHUNK_VALUES = 5_000_000


@dataclass(frozen=True)
class WassersteinOptions:
    solver: Solver = "auto"
    exact_max_pairs: int = EXACT_MAX_PAIRS
    approx: Literal["sliced", "sinkhorn"] = "sliced"
    n_projections: int = N_PROJECTIONS
    sinkhorn_reg: float = SINKHORN_REG
    sinkhorn_max_iter: int = SINKHORN_MAX_ITER
    sinkhorn_tol: float = SINKHORN_TOL
    sinkhorn_max_pairs: int = SINKHORN_MAX_PAIRS
    s0_max_nodes: int = S0_MAX_NODES
    seed: int = 0

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValuationError(f"unknown Wasserstein solver {self.solver!r}; use one of {', '.join(SOLVERS)}")
        if self.approx not in ("sliced", "sinkhorn"):
            raise ValuationError(f"unknown approximate solver {self.approx!r}; use sliced or sinkhorn")
        if self.n_projections < 1 or self.sinkhorn_reg <= 0 or self.exact_max_pairs < 1:
            raise ValuationError("n_projections, sinkhorn_reg and exact_max_pairs must be positive")


@dataclass(frozen=True)
class SolverChoice:
    """The solver of one job and every parameter that fixes its numbers."""

    name: Literal["exact", "sinkhorn", "sliced"]
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}


def choose_solver(sizes: Sequence[tuple[int, int]], options: WassersteinOptions = WassersteinOptions()) -> SolverChoice:
    """One solver for all (n_buyer, n_seller) pairs of a job: ``exact`` while every n_b·n_s fits the threshold
    (``auto``), else ``options.approx``; a forced ``options.solver`` wins."""
    largest = max((int(a) * int(b) for a, b in sizes), default=0)
    name = options.solver
    if name == "auto":
        name = "exact" if largest <= options.exact_max_pairs else options.approx
    common = {"chosen_by": "forced" if options.solver != "auto" else "auto", "exact_max_pairs": options.exact_max_pairs,
              "largest_pair": largest, "ground_cost": "euclidean"}
    if name == "exact":
        return SolverChoice("exact", {**common, "backend": "ot.emd2", "num_iter_max": EMD_MAX_ITER})
    if name == "sliced":
        return SolverChoice("sliced", {**common, "backend": "ot.sliced_wasserstein_distance", "p": 1,
                                       "n_projections": options.n_projections, "seed": options.seed,
                                       "calibration": "divided by kappa_d = E|<theta,u>|"})
    return SolverChoice("sinkhorn", {**common, "backend": "ot.sinkhorn2", "method": "sinkhorn_log",
                                     "reg_relative": options.sinkhorn_reg, "reg_reference": "median ground cost",
                                     "num_iter_max": options.sinkhorn_max_iter, "stop_thr": options.sinkhorn_tol,
                                     "max_pairs": options.sinkhorn_max_pairs, "seed": options.seed})


@dataclass(frozen=True)
class Disparity:
    value: float
    solver: SolverChoice
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"structural_disparity": self.value, "solver": self.solver.as_dict(), **self.details}


def _as_array(e: np.ndarray | torch.Tensor) -> np.ndarray:
    a = e.detach().cpu().numpy() if isinstance(e, torch.Tensor) else np.asarray(e)
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValuationError(f"an embedding must be a 2-D array, got shape {a.shape}")
    return a


def _weights(w: np.ndarray | torch.Tensor | None, n: int) -> np.ndarray:
    if w is None:
        return np.full(n, 1.0 / n)
    w = w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else np.asarray(w)
    w = w.astype(np.float64).reshape(-1)
    if w.shape[0] != n or (w < 0).any() or not w.sum() > 0 or not np.isfinite(w).all():
        raise ValuationError("node weights must be one non-negative number per row, with a positive sum")
    return w  # normalised by the caller, after sorting (so equal inputs give bit-equal weights)


def sorted_cloud(
    e: np.ndarray | torch.Tensor, w: np.ndarray | torch.Tensor | None = None, *, merge: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """A canonical form of a weighted cloud: rows sorted lexicographically, weights alongside and normalised.

    With ``merge`` (the default), equal rows become one row carrying their summed weight, so the same measure
    written with repeated rows (e.g. a collection listing every graph twice) has the same form."""
    x = _as_array(e)
    if x.shape[0] == 0:
        raise ValuationError("an embedding with no rows cannot be compared")
    wt = _weights(w, x.shape[0])
    order = np.lexsort((wt, *x.T[::-1]))  # rows first, weight breaks ties between equal rows
    x, wt = x[order], wt[order]
    if merge and x.shape[0] > 1:
        new = np.r_[True, (x[1:] != x[:-1]).any(axis=1)]
        if not new.all():
            starts = np.flatnonzero(new)
            x, wt = x[starts], np.add.reduceat(wt, starts)
    return np.ascontiguousarray(x), wt / wt.sum()  # normalised in sorted order: bit-identical for equal input


def sample_cloud(x: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """k rows drawn without replacement with probability ∝ weight, then equally weighted (kept in sorted order)."""
    if k >= x.shape[0]:
        return x, w
    idx = np.sort(rng.choice(x.shape[0], size=k, replace=False, p=w))
    return x[idx], np.full(k, 1.0 / k)


def _digest(x: np.ndarray, w: np.ndarray) -> bytes:
    h = hashlib.sha256(x.tobytes())
    h.update(w.tobytes())
    return h.digest()


def wasserstein(
    Eb: np.ndarray | torch.Tensor,
    Es: np.ndarray | torch.Tensor,
    wb: np.ndarray | torch.Tensor | None = None,
    ws: np.ndarray | torch.Tensor | None = None,
    *,
    solver: SolverChoice | None = None,
    options: WassersteinOptions = WassersteinOptions(),
    device: torch.device | str = "cpu",
) -> Disparity:
    """S = W₁ between the weighted clouds (Eb, wb) and (Es, ws) with the given (or chosen) solver."""
    xb, ab = sorted_cloud(Eb, wb)
    xs, as_ = sorted_cloud(Es, ws)
    if xb.shape[1] != xs.shape[1]:
        raise ValuationError(f"embeddings have different widths ({xb.shape[1]} and {xs.shape[1]})")
    solver = solver or choose_solver([(xb.shape[0], xs.shape[0])], options)
    if xb.shape == xs.shape and np.array_equal(xb, xs) and np.allclose(ab, as_, rtol=WEIGHT_RTOL, atol=0):
        return Disparity(0.0, solver, {"identical": True})
    # A fixed order of the pair, whichever side is the buyer: S(a, b) == S(b, a) exactly.
    (x, a), (y, b) = sorted([(xb, ab), (xs, as_)], key=lambda c: (c[0].shape[0], _digest(*c)))
    if solver.name == "exact":
        value, details = _exact(x, a, y, b)
    elif solver.name == "sliced":
        value, details = _sliced(x, a, y, b, solver.params, device)
    else:
        value, details = _sinkhorn(x, a, y, b, solver.params, device)
    return Disparity(value, solver, details)


def _cost(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    tx = torch.as_tensor(x, device=device, dtype=torch.float64)
    ty = torch.as_tensor(y, device=device, dtype=torch.float64)
    return torch.cdist(tx, ty, compute_mode="donot_use_mm_for_euclid_dist")


def _exact(x: np.ndarray, a: np.ndarray, y: np.ndarray, b: np.ndarray) -> tuple[float, dict[str, Any]]:
    m = _cost(x, y, "cpu").numpy()
    value, log = ot.emd2(a, b, m, numItermax=EMD_MAX_ITER, log=True)
    if log.get("warning"):
        raise ValuationError(f"exact optimal transport did not finish: {log['warning']}")
    return max(float(value), 0.0), {}


def kappa(d: int) -> float:
    """E|⟨θ, u⟩| for θ uniform on the unit sphere of R^d and a fixed unit vector u."""
    return float(math.exp(gammaln(d / 2) - gammaln((d + 1) / 2)) / math.sqrt(math.pi))


def projections(d: int, count: int, seed: int) -> np.ndarray:
    """``count`` seeded unit directions in R^d, as a (d, count) array."""
    g = np.random.default_rng(np.random.SeedSequence([seed, 0x51CED])).standard_normal((d, count))
    return g / np.linalg.norm(g, axis=0, keepdims=True)


def _sliced(
    x: np.ndarray, a: np.ndarray, y: np.ndarray, b: np.ndarray, params: dict[str, Any], device: torch.device | str
) -> tuple[float, dict[str, Any]]:
    d = x.shape[1]
    theta = projections(d, int(params["n_projections"]), int(params["seed"]))
    tx, ty = (torch.as_tensor(v, device=device) for v in (x, y))
    ta, tb = (torch.as_tensor(v, device=device) for v in (a, b))
    chunk = max(1, SLICED_CHUNK_VALUES // max(x.shape[0], y.shape[0]))
    total = 0.0
    for s in range(0, theta.shape[1], chunk):
        th = torch.as_tensor(theta[:, s : s + chunk], device=device)
        part = ot.sliced_wasserstein_distance(tx, ty, ta, tb, n_projections=th.shape[1], p=1, projections=th)
        total += float(part) * th.shape[1]
    raw = total / theta.shape[1]
    return raw / kappa(d), {"sliced_raw": raw, "kappa": kappa(d)}


def _sinkhorn(
    x: np.ndarray, a: np.ndarray, y: np.ndarray, b: np.ndarray, params: dict[str, Any], device: torch.device | str
) -> tuple[float, dict[str, Any]]:
    details: dict[str, Any] = {}
    pairs = x.shape[0] * y.shape[0]
    if pairs > params["max_pairs"]:
        f = math.sqrt(params["max_pairs"] / pairs)
        rx, ry = (np.random.default_rng(np.random.SeedSequence([int(params["seed"]), 0x5A, side])) for side in (0, 1))
        x, a = sample_cloud(x, a, max(1, int(x.shape[0] * f)), rx)
        y, b = sample_cloud(y, b, max(1, int(y.shape[0] * f)), ry)
        details["subsampled_to"] = [int(x.shape[0]), int(y.shape[0])]
    m = _cost(x, y, device)
    eps = float(params["reg_relative"]) * float(torch.median(m))
    if eps <= 0:
        eps = float(params["reg_relative"]) * max(float(m.max()), 1e-300)
    if torch.device(device).type == "cpu":  # POT's numpy backend: less overhead per iteration on a CPU
        ta, tb, m = a, b, m.numpy()
    else:
        ta, tb = (torch.as_tensor(v, device=device) for v in (a, b))
    value, log = ot.sinkhorn2(ta, tb, m, eps, method="sinkhorn_log", numItermax=int(params["num_iter_max"]),
                              stopThr=float(params["stop_thr"]), log=True)
    details["epsilon"] = eps
    details["iterations"] = int(log.get("niter", 0))
    return max(float(value), 0.0), details


def median_distance(
    E: np.ndarray | torch.Tensor,
    w: np.ndarray | torch.Tensor | None = None,
    *,
    max_nodes: int = S0_MAX_NODES,
    seed: int = 0,
) -> float:
    """s₀: weighted median of ‖e_i − e_j‖ over pairs i < j (weights w_i·w_j), on a seeded subsample if large."""
    x, wt = sorted_cloud(E, w, merge=False)  # pairs of nodes, equal rows included
    if x.shape[0] > max_nodes:
        x, wt = sample_cloud(x, wt, max_nodes, np.random.default_rng(np.random.SeedSequence([seed, 0x50])))
    n = x.shape[0]
    if n < 2:
        return 0.0
    dist = _cost(x, x, "cpu").numpy()
    iu = np.triu_indices(n, k=1)
    d = dist[iu]
    pw = (wt[:, None] * wt[None, :])[iu]
    order = np.argsort(d, kind="stable")
    cum = np.cumsum(pw[order])
    k = int(np.searchsorted(cum, 0.5 * cum[-1]))
    return float(d[order][min(k, d.shape[0] - 1)])


def structural_similarity(S: float, s0: float) -> float:
    """exp(−S / s₀); with s₀ = 0, 1 for S = 0 and 0 otherwise."""
    if s0 <= 0:
        return 1.0 if S == 0 else 0.0
    return float(math.exp(-S / s0))


def options_dict(options: WassersteinOptions) -> dict[str, Any]:
    return asdict(options)
