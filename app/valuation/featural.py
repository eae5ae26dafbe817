r"""Relevance and diversity of a seller's features for a buyer (METHODS.md section 1).

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
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import torch

from app.data.errors import ShareMismatch
from app.valuation.errors import ValuationError
from app.valuation.moments import Blocks, Moments, accumulate_moments, accumulate_projected

Scaling = Literal["own", "buyer", "none"]
ThresholdMode = Literal["absolute", "relative"]

DEFAULT_THRESHOLD = 1e-2
LOG_CLAMP = 1e-12
NOISE_FLOOR = 1e-10
# Up to this many features the seller accumulates the d×d scatter matrix in one pass; beyond it, it never
# forms a d×d matrix and projects each block onto the request's directions instead.
GRAM_MAX_DIM = 4096


@dataclass(frozen=True)
class FeatureRequest:
    """What the buyer publishes to sellers: directions only (plus its statistics in ``buyer`` scaling)."""

    directions: torch.Tensor  # (d, m): the kept principal directions and decoys, shuffled
    scaling: Scaling
    request_id: str
    center: torch.Tensor | None = None  # (d,) only with scaling == "buyer"
    scale: torch.Tensor | None = None  # (d,) only with scaling == "buyer"
    columns: list[str] | None = None  # feature names, so a seller can check its column order

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

    @property
    def components(self) -> int:
        return int(self.eigenvalues.shape[0])


@dataclass(frozen=True)
class SellerShare:
    """What the seller sends to the broker: one λ̂ per request direction, nothing else about its data."""

    request_id: str
    lam_hat: torch.Tensor  # (m,)
    n_rows: int
    # Hosted mode only (never written to a share file): what the seller's preprocessing was.
    constant_columns: list[int] = field(default_factory=list, compare=False)
    center: torch.Tensor | None = field(default=None, compare=False)
    scale: torch.Tensor | None = field(default=None, compare=False)


@dataclass(frozen=True)
class RelevanceDiversity:
    relevance: float
    diversity: float
    components: int
    weights: list[float]

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
) -> tuple[FeatureRequest, BuyerPrivate]:
    """Buyer's step: eigendecompose the preprocessed covariance; split it into public and private parts.

    ``scaling``: ``own`` (each party standardises with its own mean and std; the default), ``buyer`` (both
    use the buyer's mean and std, which the request then carries), ``none`` (each centres on its own mean).
    ``threshold_mode``: ``absolute`` keeps λᵢ > τ; ``relative`` keeps λᵢ > τ·λ₁.
    """
    if scaling not in ("own", "buyer", "none"):
        raise ValuationError(f"unknown scaling {scaling!r}")
    if threshold_mode not in ("absolute", "relative"):
        raise ValuationError(f"unknown threshold mode {threshold_mode!r}")
    if decoys < 0:
        raise ValuationError("decoys must be >= 0")
    moments = accumulate_moments(blocks(), device)
    center, scale = _preprocessing(moments, "none" if scaling == "none" else "own")
    cov = moments.second_moment(center) / torch.outer(scale, scale)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    eigenvalues = eigenvalues.flip(0)
    eigenvectors = eigenvectors.flip(1)
    cut = threshold * (eigenvalues[0].item() if threshold_mode == "relative" else 1.0)
    keep = eigenvalues > cut
    lam = eigenvalues[keep]
    directions = eigenvectors[:, keep]
    k, d = int(lam.shape[0]), moments.n_features

    gen = torch.Generator(device="cpu").manual_seed(seed)
    if decoys:
        noise = torch.randn((d, decoys), generator=gen, dtype=torch.float64).to(directions.device)
        directions = torch.cat([directions, noise / noise.norm(dim=0, keepdim=True)], dim=1)
    slots = torch.cat([torch.arange(k), torch.full((decoys,), -1)]).to(torch.int64)
    if decoys:
        # Shuffle so position in the request says nothing about importance.
        order = torch.randperm(k + decoys, generator=gen)
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
    )
    constant = torch.nonzero(moments.constant_columns()).flatten().tolist() if scaling != "none" else []
    private = BuyerPrivate(
        eigenvalues=lam,
        slots=slots,
        request_id=request_id,
        threshold=float(threshold),
        threshold_mode=threshold_mode,
        n_rows=moments.count,
        n_features=d,
        scaling=scaling,
        constant_columns=constant,
    )
    return request, private


def seller_share(
    blocks: Blocks,
    request: FeatureRequest,
    *,
    device: torch.device | str = "cpu",
    gram_max_dim: int = GRAM_MAX_DIM,
) -> SellerShare:
    """Seller's step: λ̂ⱼ = ‖Σ̃_s vⱼ‖₂ for every request direction vⱼ, in float64.

    Up to ``gram_max_dim`` features this is one pass (the d×d scatter matrix is small). Beyond, no d×d
    matrix is formed: λ̂ = column norms of S̃ᵀ(S̃V)/n, one pass when the request fixes the centre and scale
    (``buyer`` scaling), else one pass for the seller's mean and std and one for the projection.
    """
    device = torch.device(device)
    v = request.directions.to(device=device, dtype=torch.float64)
    d = v.shape[0]
    known = request.scaling == "buyer"
    constant: list[int] = []
    if d <= gram_max_dim:
        moments = accumulate_moments(blocks(), device)
        if known:
            center, scale = request.center.to(device), request.scale.to(device)
        else:
            center, scale = _preprocessing(moments, request.scaling)
        cov = moments.second_moment(center) / torch.outer(scale, scale)
        lam_hat = torch.linalg.vector_norm(cov @ v, dim=0)
        n = moments.count
    else:
        if known:
            center, scale = request.center.to(device), request.scale.to(device)
        else:
            moments = accumulate_moments(blocks(), device, with_gram=False)
            center, scale = _preprocessing(moments, request.scaling)
        acc, n = accumulate_projected(blocks(), center, scale, v)
        lam_hat = torch.linalg.vector_norm(acc / n, dim=0)
    if not known and request.scaling == "own":
        constant = torch.nonzero(moments.constant_columns()).flatten().tolist()
    return SellerShare(
        request_id=request.request_id,
        lam_hat=lam_hat,
        n_rows=n,
        constant_columns=constant,
        center=center,
        scale=scale,
    )


def geometric_mean(factors: torch.Tensor, weights: torch.Tensor) -> float:
    """Π fᵢ^ωᵢ in log space; exactly zero when a factor with positive weight is exactly zero."""
    if bool(((factors == 0) & (weights > 0)).any()):
        return 0.0
    return float(torch.exp((weights * torch.log(factors.clamp_min(LOG_CLAMP))).sum()))


def scores_from_spectra(
    lam: torch.Tensor, lam_hat: torch.Tensor, weights: torch.Tensor | None = None
) -> RelevanceDiversity:
    """R and D from the buyer's kept eigenvalues λ and the seller's λ̂ (same order, same length)."""
    lam = lam.to(torch.float64)
    lam_hat = lam_hat.to(device=lam.device, dtype=torch.float64)
    k = int(lam.shape[0])
    if k == 0:
        raise ValuationError("no principal component of the buyer's data is above the threshold")
    if weights is None:
        w = torch.full((k,), 1.0 / k, dtype=torch.float64, device=lam.device)
    else:
        w = torch.as_tensor(weights, dtype=torch.float64, device=lam.device)
        if w.shape != (k,) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValuationError(f"weights must be {k} non-negative numbers with a positive sum")
        w = w / w.sum()
    # Differences at the eigen-solver's rounding level are no differences: λ̂ is taken to equal λ there.
    lam_hat = torch.where((lam - lam_hat).abs() <= NOISE_FLOOR * lam.max(), lam, lam_hat)
    top = torch.maximum(lam, lam_hat)
    diff = (lam - lam_hat).abs()
    relevance = geometric_mean(torch.minimum(lam, lam_hat) / top, w)
    diversity = geometric_mean(diff / top, w)
    return RelevanceDiversity(relevance, diversity, k, w.tolist())


def broker_score(
    private: BuyerPrivate,
    share: SellerShare,
    *,
    weights: torch.Tensor | list[float] | str | None = None,
) -> RelevanceDiversity:
    """Broker's step: drop the decoys, put λ̂ back in component order, score.

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
    return scores_from_spectra(lam, lam_hat, w)
