"""An independent NumPy implementation of METHODS.md section 1, written from the formulas, for cross-checks."""

from __future__ import annotations

import numpy as np


def standardise(x: np.ndarray, scale: bool = True) -> np.ndarray:
    z = x - x.mean(axis=0)
    if scale:
        std = z.std(axis=0)
        z = z / np.where(std > 0, std, 1.0)
    return z


def relevance_diversity(
    b: np.ndarray, s: np.ndarray, scale: bool = True, tau: float = 1e-2
) -> tuple[float, float, int]:
    zb, zs = standardise(b, scale), standardise(s, scale)
    cov_b = zb.T @ zb / len(zb)
    lam, u = np.linalg.eigh(cov_b)
    lam, u = lam[::-1], u[:, ::-1]
    keep = lam > tau
    lam, u = lam[keep], u[:, keep]
    lam_hat = np.linalg.norm((zs.T @ zs / len(zs)) @ u, axis=0)
    top = np.maximum(lam, lam_hat)
    r = np.exp(np.mean(np.log(np.minimum(lam, lam_hat) / top)))
    d = np.exp(np.mean(np.log(np.abs(lam - lam_hat) / top)))
    return float(r), float(d), int(keep.sum())
