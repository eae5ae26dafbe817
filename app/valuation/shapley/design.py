"""The shared design of the batched fitters: the intercept column, products with a design shared by B models
(or one design per model), memory-bounded chunks of models, and the checks on (x, y, weights)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from app.valuation.errors import ValuationError

#: largest temporaries one chunk of models may hold (bytes); chunks shrink below ``batch_size`` to fit
CHUNK_BYTES = 512 * 2**20


def augment(x: torch.Tensor) -> torch.Tensor:
    """[x, 1]: the design with the intercept column last."""
    return torch.cat([x, torch.ones((x.shape[0], 1), dtype=x.dtype, device=x.device)], dim=1)


def penalty_vector(d: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(d+1,) ones with a 0 for the intercept."""
    pen = torch.ones(d + 1, dtype=dtype, device=device)
    pen[-1] = 0.0
    return pen


def design_times(xa: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """(n, K) @ (b, K, k) → (b, n, k) as one matrix product (a broadcast matmul would copy ``xa`` b times).
    A per-model design (b, n, K) gives a batched product."""
    if xa.dim() == 3:
        return torch.bmm(xa, theta)
    return torch.matmul(theta.transpose(1, 2), xa.T).transpose(1, 2)


def design_t_times(xa: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """(K, n) @ (b, n, k) → (b, K, k), i.e. xaᵀ r for every model, as one matrix product (per-model designs
    (b, n, K): a batched product)."""
    if xa.dim() == 3:
        return torch.bmm(xa.transpose(1, 2), r)
    return torch.matmul(r.transpose(1, 2), xa).transpose(1, 2)


def bounded(batch_size: int | None, per_model_bytes: int) -> int:
    """The models per chunk: ``batch_size``, lowered so one chunk's temporaries stay under CHUNK_BYTES."""
    cap = max(1, CHUNK_BYTES // max(per_model_bytes, 1))
    return cap if batch_size is None or batch_size <= 0 else max(1, min(batch_size, cap))


def batches(total: int, size: int | None) -> Iterator[slice]:
    size = total if size is None or size <= 0 else size
    for s in range(0, total, max(size, 1)):
        yield slice(s, min(s + size, total))


def check_xyw(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Shapes of a shared design; returns the weights in ``x``'s dtype and device."""
    if x.dim() != 2:
        raise ValuationError(f"features must be 2-D, got shape {tuple(x.shape)}")
    if y.shape[0] != x.shape[0]:
        raise ValuationError(f"{x.shape[0]} feature rows but {y.shape[0]} targets")
    if weights.dim() != 2 or weights.shape[1] != x.shape[0]:
        raise ValuationError(f"weights must be (B, {x.shape[0]}), got {tuple(weights.shape)}")
    return _nonnegative(weights.to(device=x.device, dtype=x.dtype))


def check_rows(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Shapes of gathered rows (model b trains on ``x[rows[b]]`` with ``weights[b]``); returns the weights."""
    if x.dim() != 2:
        raise ValuationError(f"features must be 2-D, got shape {tuple(x.shape)}")
    if y.shape[0] != x.shape[0]:
        raise ValuationError(f"{x.shape[0]} feature rows but {y.shape[0]} targets")
    if rows.dim() != 2 or weights.shape != rows.shape:
        raise ValuationError(f"rows and weights must both be (B, r), got {tuple(rows.shape)}, {tuple(weights.shape)}")
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= x.shape[0]):
        raise ValuationError(f"rows must index 0..{x.shape[0] - 1}")
    return _nonnegative(weights.to(device=x.device, dtype=x.dtype))


def _nonnegative(w: torch.Tensor) -> torch.Tensor:
    if bool((w < 0).any()):
        raise ValuationError("weights must be non-negative")
    return w
