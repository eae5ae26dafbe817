r"""Relevance and diversity of a seller's features for a buyer (METHODS.md section 1), with 95% intervals.

The method is split into the three parties' steps, so that blind mode (files exchanged between parties) and
hosted mode (one machine) run exactly the same code:

1. :func:`buyer_share` (buyer, private data B): preprocess, :math:`\Sigma_b = B^\top B / n_b = U
   \operatorname{diag}(\lambda) U^\top`. Keeps the components with :math:`\lambda_i > \tau`, mixes in
   optional decoy directions, shuffles, and returns a public :class:`FeatureRequest` (the directions, for
   sellers) and a :class:`BuyerPrivate` (the eigenvalues and which directions are real, for the broker).
2. :func:`seller_share` (seller, private data S): for each direction :math:`v_j` of the request,
   :math:`\hat\lambda_j = \lVert (S^\top S / n_s) v_j \rVert_2` on the seller's preprocessed data.
3. :func:`broker_score` (broker): with :math:`k` kept components and weights :math:`\omega` (uniform
   :math:`1/k` by default),

   .. math::
      R = \prod_i \Big(\tfrac{\min(\lambda_i, \hat\lambda_i)}{\max(\lambda_i, \hat\lambda_i)}\Big)^{\omega_i},
      \qquad
      D = \prod_i \Big(\tfrac{|\lambda_i - \hat\lambda_i|}{\max(\lambda_i, \hat\lambda_i)}\Big)^{\omega_i},

   computed in log space. Each pair of factors sums to one, so :math:`D + R \le 1` by AM-GM.

Numerics: ratios are clamped at 1e-12 from below before the logarithm. A difference
:math:`|\lambda_i - \hat\lambda_i|` at or below ``NOISE_FLOOR``·λ₁ is rounding of the eigen-solver
(float64 eigendecomposition is accurate to about 1e-16·‖Σ‖), so λ̂ᵢ is taken to equal λᵢ there: that factor of
D is exactly zero, and identical data gives D = 0 and R = 1 exactly.

**Intervals.** Both R and D depend on the data only through :math:`x_i = \log(\hat\lambda_i / \lambda_i)`:
with :math:`t_i = |x_i|`, :math:`R = e^{-\sum \omega_i t_i}` and :math:`D = \prod (1 - e^{-t_i})^{\omega_i}`.
Each party computes B bootstrap replicates of its own statistic (``λ*`` = ‖Σ*_b uᵢ‖ along the published
directions, ``λ̂*`` = ‖Σ*_s vⱼ‖), re-weighting G groups of its rows (:mod:`app.valuation.moments`) in the same
one pass; the broker pairs them, :math:`x^*_b = \log(\hat\lambda^*_b / \lambda^*_b)`, and forms
:func:`replicate_bounds`: a basic (reflected) bootstrap where a component's sign is resolved and a Lipschitz
bound :math:`\big||\hat x| - |x|\big| \le |\hat x - x|` where it is not (R and D have a kink at
:math:`\hat\lambda = \lambda`, where the plain bootstrap is not valid).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from app.data.errors import ShareMismatch
from app.valuation import defaults
from app.valuation.errors import ValuationError
from app.valuation.moments import (
    Blocks,
    GroupedMoments,
    Moments,
    ProjectedGroups,
    accumulate_grouped,
    accumulate_projected_grouped,
    digest_seed,
    replicate_norms,
    replicate_products,
    replicate_products_projected,
    replicate_ritz,
    replicate_weights,
)

Scaling = Literal["own", "buyer", "none"]
ThresholdMode = Literal["absolute", "relative"]

DEFAULT_THRESHOLD = defaults.THRESHOLD
LOG_CLAMP = 1e-12
NOISE_FLOOR = 1e-10
# Up to this many features the seller accumulates d×d scatter matrices in one pass; beyond it, it never
# forms a d×d matrix and projects each block onto the request's directions instead.
GRAM_MAX_DIM = 4096
# Bootstrap: B replicates over G groups of rows. Per-group accumulators may take this much memory: the one-pass
# path keeps G scatter matrices (G·d²·8 bytes, so d ≤ 1,024 at the defaults); past it a party takes the
# projected path with G·d·m·8 bytes (G lowered, down to MIN_GROUPS, to fit).
DEFAULT_REPLICATES = defaults.REPLICATES
DEFAULT_GROUPS = defaults.REPLICATE_GROUPS
MIN_GROUPS = 8
REPLICATE_MEMORY = 512 * 2**20
CONFIDENCE = defaults.CONFIDENCE
# A component counts as resolved (its sign of log(λ̂/λ) known) when its own basic interval at this level excludes 0:
# stricter than the reported level, so that a component the seller matches is rarely taken for one it does not.
RESOLVE_LEVEL = 0.99
# Rows go to groups by a fixed hash of their position (no party seed), so the order in which a party's sums are
# added up, and so every point estimate to the last bit, is the same whatever the seed.
GROUP_HASH_SEED = 0


@dataclass(frozen=True)
class FeatureRequest:
    """What the buyer publishes to sellers: directions only (plus its statistics in ``buyer`` scaling)."""

    directions: torch.Tensor  # (d, m): the kept principal directions and decoys, shuffled
    scaling: Scaling
    request_id: str
    center: torch.Tensor | None = None  # (d,) only with scaling == "buyer"
    scale: torch.Tensor | None = None  # (d,) only with scaling == "buyer"
    columns: list[str] | None = None  # feature names, so a seller can check its column order
    replicates: int = 0  # bootstrap replicates each seller computes (0: none, no intervals)
    replicate_groups: int = DEFAULT_GROUPS
    replicate_seed: int = 0  # mixed into each party's own replicate-weight seed

    @property
    def n_features(self) -> int:
        return int(self.directions.shape[0])


@dataclass(frozen=True)
class BuyerPrivate:
    """What only the broker gets: the spectrum and which request directions are real."""

    eigenvalues: torch.Tensor  # (k,) descending, the kept components
    slots: torch.Tensor  # (m,) int64: for each request direction, its component index, or -1 for a decoy
    request_id: str
    threshold: float
    threshold_mode: ThresholdMode
    n_rows: int
    n_features: int
    scaling: Scaling = "own"
    constant_columns: list[int] = field(default_factory=list)
    eigenvalue_replicates: torch.Tensor | None = None  # (B, k): ‖Σ*_b uᵢ‖ per bootstrap replicate
    notes: list[str] = field(default_factory=list)

    @property
    def components(self) -> int:
        return int(self.eigenvalues.shape[0])


@dataclass(frozen=True)
class SellerShare:
    """What the seller sends to the broker: one λ̂ per request direction (and its bootstrap replicates)."""

    request_id: str
    lam_hat: torch.Tensor  # (m,)
    n_rows: int
    # Hosted mode only (never written to a share file): what the seller's preprocessing was.
    constant_columns: list[int] = field(default_factory=list, compare=False)
    center: torch.Tensor | None = field(default=None, compare=False)
    scale: torch.Tensor | None = field(default=None, compare=False)
    lam_hat_replicates: torch.Tensor | None = field(default=None, compare=False)  # (B, m) bootstrap replicates


@dataclass(frozen=True, eq=False)
class ReplicateBounds:
    """Per bootstrap replicate, a lower and an upper value of R and of D (see :func:`replicate_bounds`)."""

    relevance_lo: torch.Tensor  # (B,)
    relevance_hi: torch.Tensor
    diversity_lo: torch.Tensor
    diversity_hi: torch.Tensor
    resolved: torch.Tensor  # (k,) bool: components whose sign of log(λ̂/λ) the data resolve
    confidence: float = CONFIDENCE

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ReplicateBounds):
            return NotImplemented
        names = ("relevance_lo", "relevance_hi", "diversity_lo", "diversity_hi", "resolved")
        return self.confidence == other.confidence and all(
            torch.equal(getattr(self, n), getattr(other, n)) for n in names)

    def _interval(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[float, float]:
        a = (1.0 - self.confidence) / 2
        low = float(torch.quantile(lo, a))
        high = float(torch.quantile(hi, 1.0 - a))
        return max(0.0, low), min(1.0, high)

    def relevance(self) -> tuple[float, float]:
        return self._interval(self.relevance_lo, self.relevance_hi)

    def diversity(self) -> tuple[float, float]:
        return self._interval(self.diversity_lo, self.diversity_hi)

    def score(self, alpha: float) -> tuple[float, float]:
        """Interval of α·D + (1 − α)·R from the same replicates (so R and D move together)."""
        return self._interval(alpha * self.diversity_lo + (1 - alpha) * self.relevance_lo,
                              alpha * self.diversity_hi + (1 - alpha) * self.relevance_hi)


@dataclass(frozen=True)
class RelevanceDiversity:
    relevance: float
    diversity: float
    components: int
    weights: list[float]
    bounds: ReplicateBounds | None = None

    def score(self, alpha: float) -> float:
        """Single figure for a buyer who values diversity with weight α and relevance with 1 − α."""
        return alpha * self.diversity + (1.0 - alpha) * self.relevance


def _preprocessing(moments: Moments, scaling: Scaling) -> tuple[torch.Tensor, torch.Tensor]:
    center = moments.mean
    scale = moments.std_or_one() if scaling == "own" else torch.ones_like(center)
    return center, scale


def _request_id(directions: torch.Tensor, seed: int) -> str:
    h = hashlib.sha256(directions.detach().cpu().contiguous().numpy().tobytes())
    h.update(str(seed).encode())
    return h.hexdigest()[:32]


def _weights(replicates: int, groups: GroupedMoments | ProjectedGroups, seed: int, device: torch.device | str,
             center: torch.Tensor | None = None, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Exp(1) group weights, seeded by ``seed`` and the party's per-group counts and raw sums Σx (the same on
    either path and whatever the block size), so that only the party can reproduce them."""
    if isinstance(groups, GroupedMoments):
        raw = groups.sums + groups.counts[:, None] * groups.shift
    else:
        raw = groups.sums * scale + groups.counts[:, None] * center
    return replicate_weights(replicates, groups.counts.shape[0], digest_seed(seed, groups.counts, raw), device)


def _groups_fitting(groups: int, per_group_bytes: int) -> int:
    return max(MIN_GROUPS, min(groups, REPLICATE_MEMORY // max(per_group_bytes, 1)))


def decoy_layers(directions: torch.Tensor, copies: int, movable: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``copies`` decoy layers, each the kept directions with their entries permuted by one random permutation
    of the ``movable`` coordinates (the others, the buyer's constant columns, stay in place).

    A layer P·U is the set of kept eigenvectors of the buyer's data with its columns shuffled: orthonormal, with
    exactly the entries of U, so anything that does not depend on which column is which (norms, the Gram matrix
    within and across layers, entry statistics, sign patterns) has the same distribution for every layer.
    """
    idx = torch.nonzero(movable).flatten().to(directions.device)
    layers = []
    for _ in range(copies):
        perm = idx[torch.randperm(idx.shape[0], generator=gen).to(directions.device)]
        layer = directions.clone()
        layer[idx] = directions[perm]
        layers.append(layer)
    return torch.cat(layers, dim=1) if layers else directions[:, :0]


def buyer_share(
    blocks: Blocks,
    *,
    scaling: Scaling = "own",
    threshold: float = DEFAULT_THRESHOLD,
    threshold_mode: ThresholdMode = "absolute",
    decoys: int = 0,
    seed: int = 0,
    columns: list[str] | None = None,
    device: torch.device | str = "cpu",
    replicates: int = DEFAULT_REPLICATES,
    replicate_groups: int = DEFAULT_GROUPS,
) -> tuple[FeatureRequest, BuyerPrivate]:
    """Buyer's step: eigendecompose the preprocessed covariance; split it into public and private parts.

    ``scaling``: ``own`` (each party standardises with its own mean and std; the default), ``buyer`` (both
    use the buyer's mean and std, which the request then carries), ``none`` (each centres on its own mean).
    ``threshold_mode``: ``absolute`` keeps λᵢ > τ; ``relative`` keeps λᵢ > τ·λ₁.
    ``decoys``: at least this many decoy directions, in whole layers of k (see :func:`decoy_layers`); every
    direction's sign is random and the request is shuffled.
    ``replicates``: bootstrap replicates (over ``replicate_groups`` groups of rows) of the kept spectrum for the
    broker (Rayleigh–Ritz values of each replicate's Σ*_b in the kept directions), and the number each seller is
    asked for; 0 turns intervals off.
    """
    if scaling not in ("own", "buyer", "none"):
        raise ValuationError(f"unknown scaling {scaling!r}")
    if threshold_mode not in ("absolute", "relative"):
        raise ValuationError(f"unknown threshold mode {threshold_mode!r}")
    if decoys < 0 or replicates < 0 or replicate_groups < 1:
        raise ValuationError("decoys and replicates must be >= 0, replicate groups >= 1")
    groups = replicate_groups if replicates else 1
    gm = accumulate_grouped(blocks(), device, groups=groups, seed=GROUP_HASH_SEED, gram_bytes=REPLICATE_MEMORY)
    moments = gm.total()
    center, scale = _preprocessing(moments, "none" if scaling == "none" else "own")
    cov = moments.second_moment(center) / torch.outer(scale, scale)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    eigenvalues = eigenvalues.flip(0)
    eigenvectors = eigenvectors.flip(1)
    cut = threshold * (eigenvalues[0].item() if threshold_mode == "relative" else 1.0)
    keep = eigenvalues > cut
    lam = eigenvalues[keep]
    real = eigenvectors[:, keep]
    k, d = int(lam.shape[0]), moments.n_features

    gen = torch.Generator(device="cpu").manual_seed(seed)
    notes: list[str] = []
    copies = math.ceil(decoys / k) if decoys and k else 0
    if copies and copies * k != decoys:
        notes.append(f"{copies * k} decoy directions ({copies} shuffled cop{'y' if copies == 1 else 'ies'} of the "
                     f"{k} kept ones), not {decoys}: decoys come in whole layers, which hide the real one")
    constant = moments.constant_columns()
    # Random signs (an eigenvector's sign is arbitrary, and a solver's sign convention would single out U).
    signs = (torch.randint(0, 2, (k * (1 + copies),), generator=gen) * 2 - 1).to(real)
    directions = torch.cat([real, decoy_layers(real, copies, ~constant.cpu(), gen)], dim=1) * signs
    real = directions[:, :k]
    slots = torch.cat([torch.arange(k), torch.full((copies * k,), -1)]).to(torch.int64)
    if copies:
        # Shuffle so position in the request says nothing about importance or which layer is real.
        order = torch.randperm(directions.shape[1], generator=gen)
        directions = directions[:, order.to(directions.device)]
        slots = slots[order]
    request_id = _request_id(directions, seed)
    request = FeatureRequest(
        directions=directions,
        scaling=scaling,
        request_id=request_id,
        center=center if scaling == "buyer" else None,
        scale=scale if scaling == "buyer" else None,
        columns=list(columns) if columns is not None else None,
        replicates=replicates,
        replicate_groups=replicate_groups,
        replicate_seed=seed,
    )
    lam_rep = None
    if replicates and k:
        if gm.grams is not None:
            weights = _weights(replicates, gm, seed, device)
            lam_rep = replicate_ritz(replicate_products(gm, weights, real, "none" if scaling == "none" else "own"),
                                     real)
        else:  # too wide for per-group scatter matrices: one more pass, projected on the k real directions
            g = _groups_fitting(groups, d * k * 8)
            pg = accumulate_projected_grouped(blocks(), center, scale, real, groups=g, seed=GROUP_HASH_SEED)
            weights = _weights(replicates, pg, seed, device, center, scale)
            lam_rep = replicate_ritz(replicate_products_projected(pg, weights, real, centred=True), real)
            notes.append("the buyer's replicates hold its column scales fixed (too many features for per-group "
                         "scatter matrices)")
    private = BuyerPrivate(
        eigenvalues=lam,
        slots=slots,
        request_id=request_id,
        threshold=float(threshold),
        threshold_mode=threshold_mode,
        n_rows=moments.count,
        n_features=d,
        scaling=scaling,
        constant_columns=torch.nonzero(constant).flatten().tolist() if scaling != "none" else [],
        eigenvalue_replicates=lam_rep.cpu() if lam_rep is not None else None,
        notes=notes,
    )
    return request, private


def seller_share(
    blocks: Blocks,
    request: FeatureRequest,
    *,
    device: torch.device | str = "cpu",
    gram_max_dim: int = GRAM_MAX_DIM,
) -> SellerShare:
    """Seller's step: λ̂ⱼ = ‖Σ̃_s vⱼ‖₂ for every request direction vⱼ, in float64, and its bootstrap replicates.

    Up to ``gram_max_dim`` features (and while G scatter matrices fit ``REPLICATE_MEMORY``) this is one pass.
    Beyond, no d×d matrix is formed: λ̂ = column norms of S̃ᵀ(S̃V)/n, one pass when the request fixes the centre
    and scale (``buyer`` scaling), else one pass for the seller's mean and std and one for the projection.
    Replicate weights are seeded from the seller's own sums, so the broker cannot reproduce them.
    """
    device = torch.device(device)
    v = request.directions.to(device=device, dtype=torch.float64)
    d, m = v.shape
    known = request.scaling == "buyer"
    B = request.replicates
    groups = request.replicate_groups if B else 1
    seed = request.replicate_seed
    constant: list[int] = []
    lam_rep = None
    if d <= gram_max_dim and (not B or groups * d * d * 8 <= REPLICATE_MEMORY):
        gm = accumulate_grouped(blocks(), device, groups=groups, seed=GROUP_HASH_SEED, gram_bytes=REPLICATE_MEMORY)
        moments = gm.total()
        if known:
            center, scale = request.center.to(device), request.scale.to(device)
        else:
            center, scale = _preprocessing(moments, request.scaling)
        cov = moments.second_moment(center) / torch.outer(scale, scale)
        lam_hat = torch.linalg.vector_norm(cov @ v, dim=0)
        n = moments.count
        if B:
            weights = _weights(B, gm, seed, device)
            lam_rep = replicate_norms(replicate_products(gm, weights, v, "known" if known else request.scaling,
                                                         center, scale))
    else:
        if known:
            center, scale = request.center.to(device), request.scale.to(device)
        else:
            gm = accumulate_grouped(blocks(), device, groups=1, seed=GROUP_HASH_SEED)
            moments = gm.total()
            center, scale = _preprocessing(moments, request.scaling)
        g = _groups_fitting(groups, d * m * 8) if B else 1
        pg = accumulate_projected_grouped(blocks(), center, scale, v, groups=g, seed=GROUP_HASH_SEED)
        n = pg.count
        lam_hat = torch.linalg.vector_norm(pg.acc.sum(dim=0) / n, dim=0)
        if B:
            weights = _weights(B, pg, seed, device, center, scale)
            lam_rep = replicate_norms(replicate_products_projected(pg, weights, v, centred=not known))
    if not known and request.scaling == "own":
        constant = torch.nonzero(moments.constant_columns()).flatten().tolist()
    return SellerShare(
        request_id=request.request_id,
        lam_hat=lam_hat,
        n_rows=n,
        lam_hat_replicates=lam_rep.cpu() if lam_rep is not None else None,
        constant_columns=constant,
        center=center,
        scale=scale,
    )


def geometric_mean(factors: torch.Tensor, weights: torch.Tensor) -> float:
    """Π fᵢ^ωᵢ in log space; exactly zero when a factor with positive weight is exactly zero."""
    if bool(((factors == 0) & (weights > 0)).any()):
        return 0.0
    return float(torch.exp((weights * torch.log(factors.clamp_min(LOG_CLAMP))).sum()))


def _component_weights(k: int, weights: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    if weights is None:
        return torch.full((k,), 1.0 / k, dtype=torch.float64, device=device)
    w = torch.as_tensor(weights, dtype=torch.float64, device=device)
    if w.shape != (k,) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValuationError(f"weights must be {k} non-negative numbers with a positive sum")
    return w / w.sum()


def scores_from_spectra(
    lam: torch.Tensor, lam_hat: torch.Tensor, weights: torch.Tensor | None = None
) -> RelevanceDiversity:
    """R and D from the buyer's kept eigenvalues λ and the seller's λ̂ (same order, same length)."""
    lam = lam.to(torch.float64)
    lam_hat = lam_hat.to(device=lam.device, dtype=torch.float64)
    k = int(lam.shape[0])
    if k == 0:
        raise ValuationError("no principal component of the buyer's data is above the threshold")
    w = _component_weights(k, weights, lam.device)
    # Differences at the eigen-solver's rounding level are no differences: λ̂ is taken to equal λ there.
    lam_hat = torch.where((lam - lam_hat).abs() <= NOISE_FLOOR * lam.max(), lam, lam_hat)
    top = torch.maximum(lam, lam_hat)
    diff = (lam - lam_hat).abs()
    relevance = geometric_mean(torch.minimum(lam, lam_hat) / top, w)
    diversity = geometric_mean(diff / top, w)
    return RelevanceDiversity(relevance, diversity, k, w.tolist())


def log_ratios(lam: torch.Tensor, lam_hat: torch.Tensor, floor: float) -> torch.Tensor:
    """x = log(λ̂/λ), exactly 0 where |λ̂ − λ| ≤ ``floor``, clamped to ±log(1/LOG_CLAMP) (as R's factors are)."""
    limit = -math.log(LOG_CLAMP)
    x = torch.log(lam_hat.clamp_min(0.0) / lam).clamp(-limit, limit)
    return torch.where((lam_hat - lam).abs() <= floor, torch.zeros_like(x), x)


def _psi(t: torch.Tensor) -> torch.Tensor:
    """log(1 − e^{−t}): the log of one factor of D (clamped at log LOG_CLAMP)."""
    return torch.log((-torch.expm1(-t)).clamp_min(LOG_CLAMP))


def replicate_bounds(
    lam: torch.Tensor,
    lam_hat: torch.Tensor,
    lam_rep: torch.Tensor,
    lam_hat_rep: torch.Tensor,
    weights: torch.Tensor,
    confidence: float = CONFIDENCE,
) -> ReplicateBounds:
    r"""Per-replicate lower and upper values of R and D, whose quantiles are the interval ends.

    With :math:`\hat x = \log(\hat\lambda/\lambda)`, replicate pairs :math:`x^*_b`, :math:`t = |x|` and
    :math:`\psi(t) = \log(1 - e^{-t})` (so :math:`-\log R = \sum \omega t` and :math:`\log D = \sum \omega
    \psi(t)`), component i is *resolved* when :math:`\hat x_i \ne 0` and its own basic bootstrap interval
    :math:`[2\hat x_i - q_{hi}(x^*_i), 2\hat x_i - q_{lo}(x^*_i)]` at level ``RESOLVE_LEVEL`` excludes 0.

    * Resolved: the sign of :math:`x_i` is known and R's and D's resolved parts are smooth there; each statistic
      itself is reflected about its estimate (the basic bootstrap, which also removes first-order bias, that of
      curvature included): :math:`\sum_{res} \omega (2\hat t - t^*_b)` for :math:`-\log R` and
      :math:`2\hat D_{res} - D^*_{res,b}` (within [0, 1]) for :math:`D_{res} = \prod_{res} (1 - e^{-t})^\omega`.
    * Unresolved: only :math:`|\,|\hat x_i| - |x_i|\,| \le |\hat x_i - x_i|`, with the error drawn as
      :math:`a_{bi} = |x^*_{bi} - \hat x_i|`: :math:`t_i \in [\hat t_i - a_{bi}, \hat t_i + a_{bi}]`, summed
      over components before :math:`-\log R` is clipped at 0; D can be 0 (its lower end is 0), and its upper
      end uses :math:`\psi(\hat t_i + a_{bi})`.

    The interval is [q_{(1−c)/2}(lo), q_{(1+c)/2}(hi)]. Identical data (x̂ = 0, x* = 0) gives R = [1, 1] and
    D = [0, 0]; a component the seller matches exactly keeps D's lower end at 0.
    """
    lam = lam.to(torch.float64)
    floor = NOISE_FLOOR * float(lam.max())
    x = log_ratios(lam, lam_hat.to(torch.float64), floor)  # (k,)
    xs = log_ratios(lam_rep.to(torch.float64), lam_hat_rep.to(torch.float64), floor)  # (B, k)
    a = (1.0 - max(confidence, RESOLVE_LEVEL)) / 2
    q_lo, q_hi = torch.quantile(xs, a, dim=0), torch.quantile(xs, 1.0 - a, dim=0)
    resolved = (x != 0) & ((2 * x - q_hi > 0) | (2 * x - q_lo < 0))
    w = weights.to(torch.float64)
    res, unres = resolved.to(torch.float64) * w, (~resolved).to(torch.float64) * w
    t, ts, spread = x.abs(), xs.abs(), (xs - x).abs()
    tau_res = (res * (2 * t - ts)).sum(dim=1)
    tau_lo = tau_res + (unres * (t - spread)).sum(dim=1)
    tau_hi = tau_res + (unres * (t + spread)).sum(dim=1)
    r_hi = torch.exp(-tau_lo.clamp_min(0.0))
    r_lo = torch.exp(-tau_hi.clamp_min(0.0))
    # The resolved part of D, Π_res (1 − e^{−t})^ω, reflected as a whole (basic bootstrap of the statistic itself).
    d_res = (2 * torch.exp((res * _psi(t)).sum()) - torch.exp((res * _psi(ts)).sum(dim=1))).clamp(0.0, 1.0)
    may_vanish = bool(((~resolved) & (w > 0)).any())
    d_lo = torch.zeros_like(d_res) if may_vanish else d_res
    upper = t + spread
    exact_zero = ((upper == 0) & ~resolved & (w > 0)).any(dim=1)  # e.g. identical data: D is exactly 0
    d_hi = torch.where(exact_zero, torch.zeros_like(d_res), d_res * torch.exp((unres * _psi(upper)).sum(dim=1)))
    return ReplicateBounds(r_lo, r_hi, d_lo, d_hi, resolved, confidence)


def broker_score(
    private: BuyerPrivate,
    share: SellerShare,
    *,
    weights: torch.Tensor | list[float] | str | None = None,
    confidence: float = CONFIDENCE,
) -> RelevanceDiversity:
    """Broker's step: drop the decoys, put λ̂ back in component order, score; bound the score where both
    parties sent bootstrap replicates (the same number of them).

    ``weights``: ``None``/``"uniform"`` (1/k each), ``"eigenvalue"`` (ωᵢ ∝ λᵢ), or k explicit numbers.
    """
    if share.request_id != private.request_id:
        raise ShareMismatch(
            None,
            f"the seller's share answers request {share.request_id}, not this buyer's request "
            f"{private.request_id}",
        )
    if share.lam_hat.shape[0] != private.slots.shape[0]:
        raise ShareMismatch(None, "the seller's share has the wrong number of directions")
    real = private.slots >= 0
    lam_hat = torch.empty(private.components, dtype=torch.float64)
    lam_hat[private.slots[real]] = share.lam_hat.detach().cpu().to(torch.float64)[real]
    lam = private.eigenvalues.detach().cpu().to(torch.float64)
    if weights is None or (isinstance(weights, str) and weights == "uniform"):
        w = None
    elif isinstance(weights, str) and weights == "eigenvalue":
        w = lam / lam.sum()
    elif isinstance(weights, str):
        raise ValuationError(f"unknown weighting {weights!r}; use uniform, eigenvalue or explicit numbers")
    else:
        w = torch.as_tensor(weights, dtype=torch.float64)
    scores = scores_from_spectra(lam, lam_hat, w)
    buyer_rep, seller_rep = private.eigenvalue_replicates, share.lam_hat_replicates
    if buyer_rep is None or seller_rep is None or buyer_rep.shape[0] != seller_rep.shape[0]:
        return scores
    rep = torch.empty((seller_rep.shape[0], private.components), dtype=torch.float64)
    rep[:, private.slots[real]] = seller_rep.detach().cpu().to(torch.float64)[:, real]
    bounds = replicate_bounds(lam, lam_hat, buyer_rep.cpu(), rep, torch.tensor(scores.weights, dtype=torch.float64),
                              confidence)
    return replace(scores, bounds=bounds)
