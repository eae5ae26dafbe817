r"""Batched solves of many small symmetric positive definite systems on the CPU: H_b s_b = g_b for b = 1..B.

Why not LAPACK: TMC's Newton steps factor tens of thousands of 31 × 31 Hessians, a few dozen per call. MKL and
OpenBLAS factor a batch one matrix at a time, and at this size a call costs ~5–7 µs (with the ``tril`` torch
adds), about 1 GFLOP/s: the fixed cost of each call, not arithmetic. Here the batch is the innermost axis and
each matrix is its packed lower triangle, ``hp`` (K(K+1)/2, B) with row i(i+1)/2 + j holding H_ij (j ≤ i, the
order of ``torch.tril_indices``), so every step of the Cholesky recurrence

.. math::

    L_{jj} = \sqrt{H_{jj} - \sum_{p<j} L_{jp}^2}, \qquad
    L_{ij} = \Big(H_{ij} - \sum_{p<j} L_{ip} L_{jp}\Big) / L_{jj} \quad (i > j)

and of the two triangular solves L z = g, Lᵀ s = z is one vector operation over the B systems, which the
compiler turns into SIMD instructions (~1.5 µs a 31 × 31 system, solves included, against ~7 µs). The arithmetic
is LAPACK's unblocked algorithm in the input's dtype; only the order of the sums differs. The packed triangle
also halves the product that forms the Hessians (:class:`~app.valuation.shapley.binary_newton._Design`).

The kernel is C (``_small_spd.c``), compiled by ``pip install`` where a C compiler is found; without it
:data:`AVAILABLE` is False and callers use LAPACK. A system whose factorisation meets a pivot that is not
positive is flagged, and the caller handles it (more damping), as it does LAPACK's ``info``.
"""

from __future__ import annotations

import torch

try:
    from app.valuation.shapley import _small_spd
except ImportError:  # built without a C compiler: callers fall back to LAPACK
    _small_spd = None

#: whether the compiled kernel is there (``pip install`` found a C compiler)
AVAILABLE = _small_spd is not None


def serves(device: torch.device) -> bool:
    """Whether the kernel solves for tensors on ``device``: built, and the CPU."""
    return AVAILABLE and device.type == "cpu"


def packed_diagonal(k: int) -> torch.Tensor:
    """The rows of the diagonal H_ii in the packed lower triangle: i(i+1)/2 + i."""
    i = torch.arange(k)
    return i * (i + 1) // 2 + i


def solve_spd_packed(hp: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve H_b s_b = g_b, ``hp`` (K(K+1)/2, B) the packed lower triangles (see the module docstring) and ``g``
    (K, B), CPU tensors of one dtype (float32 or float64). Returns (s (K, B), bad (B,) bool): ``bad`` marks the
    systems whose Cholesky met a pivot ≤ 0 (their s is meaningless)."""
    if _small_spd is None:
        raise RuntimeError("the compiled SPD kernel is not built: reinstall Appraise where a C compiler is found")
    k, b = g.shape
    if hp.shape != (k * (k + 1) // 2, b) or hp.dtype != g.dtype or hp.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"packed Hessians {tuple(hp.shape)} {hp.dtype} do not fit right-hand sides "
                         f"{tuple(g.shape)} {g.dtype}")
    if hp.device.type != "cpu":
        raise ValueError("the SPD kernel runs on the CPU")
    hp, g = hp.contiguous(), g.contiguous()
    low, step = torch.empty_like(hp), torch.empty_like(g)
    bad = torch.zeros(b, dtype=torch.uint8)
    _small_spd.solve(hp.data_ptr(), g.data_ptr(), low.data_ptr(), step.data_ptr(), bad.data_ptr(), k, b,
                     hp.dtype == torch.float64)
    return step, bad.bool()
