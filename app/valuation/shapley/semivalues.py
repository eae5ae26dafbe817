r"""Semivalue weights: Shapley, Beta(α, β) (Kwon & Zou) and Banzhaf.

A semivalue gives player i

.. math:: \phi_i = \sum_{T \subseteq N\setminus\{i\}} p(|T|)\,\big(U(T\cup\{i\}) - U(T)\big),
          \qquad \sum_{k=0}^{n-1} \binom{n-1}{k} p(k) = 1 \;\text{(Shapley, Beta)}.

- Shapley: :math:`p(k) = k!\,(n-k-1)!/n!`.
- Beta(α, β): :math:`p(k) = B(k+\beta,\; n-k-1+\alpha) / B(\alpha, \beta)`. In Kwon & Zou's notation (and
  METHODS §3) the weight of a point joining a set of size :math:`j-1` is
  :math:`w(j) = n\,B(j+\beta-1,\; n-j+\alpha)/B(\alpha,\beta) = n\,p(j-1)`, applied to
  :math:`\sum_{|T|=j-1}` marginals with a leading 1/n. Beta(1, 1) gives Shapley's p; Beta(16, 1) up-weights
  small sets.
- Banzhaf: :math:`p(k) = 2^{-(n-1)}` (not normalised as above; it is the mean marginal over all subsets).

**Permutation sampling.** In a uniform random permutation, player i lands at position j (1-based) with
probability 1/n and its predecessors form a uniform random set of size j−1, so
:math:`\mathbb E[\,q(j)\,(v_j - v_{j-1})] = \phi_i` for the importance weight

.. math:: q(j) = n \binom{n-1}{j-1} p(j-1) = \binom{n-1}{j-1}\, w(j),

which is 1 for every j under Shapley. (Note the binomial: METHODS' w(j) is the per-subset weight, the
per-permutation-sample weight carries the extra :math:`\binom{n-1}{j-1}`.) All weights are computed in log space.
"""

from __future__ import annotations

import math

import torch

_F64 = torch.float64


def _lbeta(a: torch.Tensor | float, b: torch.Tensor | float) -> torch.Tensor:
    a = torch.as_tensor(a, dtype=_F64)
    b = torch.as_tensor(b, dtype=_F64)
    return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)


def _log_binom(n: int, k: torch.Tensor) -> torch.Tensor:
    return math.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)


def _check_ab(alpha: float, beta: float) -> None:
    if not (alpha > 0 and beta > 0):
        raise ValueError(f"Beta parameters must be > 0, got alpha={alpha}, beta={beta}")


def shapley_subset_weights(n: int) -> torch.Tensor:
    """p(k) = k!(n−k−1)!/n! for k = 0..n−1, float64 (CPU)."""
    k = torch.arange(n, dtype=_F64)
    return torch.exp(torch.lgamma(k + 1) + torch.lgamma(n - k) - math.lgamma(n + 1))


def beta_subset_weights(n: int, alpha: float, beta: float) -> torch.Tensor:
    """p(k) = B(k+β, n−k−1+α)/B(α, β) for k = 0..n−1; exactly Shapley's weights for α = β = 1."""
    _check_ab(alpha, beta)
    if alpha == 1 and beta == 1:
        return shapley_subset_weights(n)
    k = torch.arange(n, dtype=_F64)
    return torch.exp(_lbeta(k + beta, n - k - 1 + alpha) - _lbeta(alpha, beta))


def banzhaf_subset_weights(n: int) -> torch.Tensor:
    """p(k) = 2^{−(n−1)}."""
    return torch.full((n,), 2.0 ** (-(n - 1)), dtype=_F64)


def beta_permutation_weights(n: int, alpha: float, beta: float) -> torch.Tensor | None:
    r"""Importance weights q(j) for positions j = 1..n of a uniform permutation (index j−1), float64 (CPU).

    :math:`q(j) = n\binom{n-1}{j-1} B(j+\beta-1, n-j+\alpha)/B(\alpha,\beta)`. Returns ``None`` for
    α = β = 1, where q ≡ 1 exactly, so Beta(1, 1) runs the very same arithmetic as plain permutation Shapley.
    """
    _check_ab(alpha, beta)
    if alpha == 1 and beta == 1:
        return None
    k = torch.arange(n, dtype=_F64)  # k = j − 1, the size of the set joined
    return torch.exp(math.log(n) + _log_binom(n - 1, k) + _lbeta(k + beta, n - k - 1 + alpha) - _lbeta(alpha, beta))
