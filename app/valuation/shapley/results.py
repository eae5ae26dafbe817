r"""Running results of a valuation: per-player count, mean and M2, mergeable across batches and workers.

Every Monte Carlo estimator here is a mean of per-player samples (marginal contributions, weighted marginals,
or, for Banzhaf MSR, utilities of coalitions with / without the player). Per player we keep Welford's triple

.. math:: c_i = \#\text{samples}, \qquad \bar x_i = \frac1{c_i}\sum_s x_{is}, \qquad
          M2_i = \sum_s (x_{is} - \bar x_i)^2,

so the sample variance is :math:`\sigma_i^2 = M2_i / (c_i - 1)` and the standard error of the mean is
:math:`\sqrt{\sigma_i^2 / c_i}`. Two triples combine exactly (Chan, Golub & LeVeque's parallel formula):

.. math:: c = c_a + c_b, \quad \delta = \bar x_b - \bar x_a, \quad
          \bar x = \bar x_a + \delta\,\frac{c_b}{c}, \quad M2 = M2_a + M2_b + \delta^2\,\frac{c_a c_b}{c}.

A batch of samples is first reduced to its own triple (two-pass: mean, then squared deviations) with tensor
ops, then merged with the formula above: no Python loop over samples, and merging shards computed by
different workers gives the whole run's numbers up to rounding (1e-12).

Data Banzhaf (MSR) keeps two triples per player, one over the utilities of sampled coalitions that contain
the player (``stats``) and one over those that do not (``stats_out``); the value is the difference of the two
means and its variance the sum of the two means' variances.

The checkpoint (:meth:`ValuationResult.to_dict`) is plain JSON (lists, numbers, strings): floats survive a JSON
round trip bit for bit, so a run resumed from it continues exactly as if uninterrupted. Nothing is pickled.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from app.valuation.errors import ValuationError

FORMAT = "appraise.valuation_result/1"

_F64 = torch.float64


class RunningStats:
    """Per-player Welford triple (count, mean, M2) over ``n`` players, on one device."""

    __slots__ = ("count", "mean", "m2")

    def __init__(self, n: int, device: torch.device | str | None = None) -> None:
        self.count = torch.zeros(n, dtype=torch.int64, device=device)
        self.mean = torch.zeros(n, dtype=_F64, device=device)
        self.m2 = torch.zeros(n, dtype=_F64, device=device)

    @property
    def n(self) -> int:
        return int(self.count.shape[0])

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @classmethod
    def from_tensors(cls, count: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor) -> RunningStats:
        out = cls.__new__(cls)
        out.count, out.mean, out.m2 = count.to(torch.int64), mean.to(_F64), m2.to(_F64)
        return out

    def copy(self) -> RunningStats:
        return RunningStats.from_tensors(self.count.clone(), self.mean.clone(), self.m2.clone())

    def to(self, device: torch.device | str) -> RunningStats:
        return RunningStats.from_tensors(self.count.to(device), self.mean.to(device), self.m2.to(device))

    # --- batch reductions -------------------------------------------------------------------------------
    @classmethod
    def of_dense(cls, samples: torch.Tensor, mask: torch.Tensor | None = None) -> RunningStats:
        r"""Triple of a (B, n) matrix of samples, column j holding player j's samples.

        With ``mask`` (B, n) bool only the entries where it is True count. Two-pass:
        :math:`\bar x_j = \sum_b m_{bj} x_{bj} / c_j`, :math:`M2_j = \sum_b m_{bj} (x_{bj} - \bar x_j)^2`.
        """
        x = samples.to(_F64)
        if mask is None:
            count = torch.full((x.shape[1],), x.shape[0], dtype=torch.int64, device=x.device)
            mean = x.sum(0) / max(x.shape[0], 1)
            m2 = ((x - mean) ** 2).sum(0)
        else:
            m = mask.to(torch.bool)
            count = m.sum(0)
            xm = torch.where(m, x, 0.0)
            mean = xm.sum(0) / count.clamp_min(1)
            m2 = torch.where(m, (x - mean) ** 2, 0.0).sum(0)
        return cls.from_tensors(count, mean, m2)

    @classmethod
    def of_indexed(cls, n: int, players: torch.Tensor, samples: torch.Tensor) -> RunningStats:
        """Triple of samples given as (player index, value) pairs; players may repeat (any shape, flattened)."""
        p = players.reshape(-1).to(torch.int64)
        x = samples.reshape(-1).to(_F64)
        if p.shape != x.shape:
            raise ValueError(f"players {tuple(players.shape)} and samples {tuple(samples.shape)} differ in size")
        count = torch.bincount(p, minlength=n)
        if count.shape[0] > n:
            raise ValueError(f"player index out of range 0..{n - 1}")
        total = torch.zeros(n, dtype=_F64, device=x.device).index_add_(0, p, x)
        mean = total / count.clamp_min(1)
        m2 = torch.zeros(n, dtype=_F64, device=x.device).index_add_(0, p, (x - mean[p]) ** 2)
        return cls.from_tensors(count, mean, m2)

    # --- merging -----------------------------------------------------------------------------------------
    def merge_(self, other: RunningStats) -> RunningStats:
        """Chan et al.'s exact parallel combination, in place; returns self."""
        if other.n != self.n:
            raise ValueError(f"cannot merge stats over {self.n} and {other.n} players")
        ca, cb = self.count, other.count.to(self.device)
        mb, m2b = other.mean.to(self.device), other.m2.to(self.device)
        c = ca + cb
        frac = cb.to(_F64) / c.clamp_min(1).to(_F64)  # c_b / c, 0 where c = 0
        delta = mb - self.mean
        self.m2 = self.m2 + m2b + delta * delta * ca.to(_F64) * frac
        self.mean = self.mean + delta * frac
        self.count = c
        return self

    def update(self, players: torch.Tensor, samples: torch.Tensor) -> RunningStats:
        """Add many samples at once: ``samples[k]`` belongs to player ``players[k]`` (repeats allowed)."""
        return self.merge_(RunningStats.of_indexed(self.n, players.to(self.device), samples.to(self.device)))

    def update_dense(self, samples: torch.Tensor, mask: torch.Tensor | None = None) -> RunningStats:
        """Add a (B, n) matrix of samples (column = player), optionally masked."""
        return self.merge_(RunningStats.of_dense(samples, mask))

    # --- derived -----------------------------------------------------------------------------------------
    def variance(self) -> torch.Tensor:
        """Sample variance M2/(c−1); +inf where c < 2."""
        c = self.count.to(_F64)
        return torch.where(self.count > 1, self.m2 / (c - 1).clamp_min(1), math.inf)

    def variance_of_mean(self) -> torch.Tensor:
        """σ²/c, the squared standard error of the mean; +inf where c < 2."""
        c = self.count.to(_F64)
        return torch.where(self.count > 1, self.variance() / c.clamp_min(1), math.inf)

    def to_dict(self) -> dict[str, list]:
        return {"count": self.count.tolist(), "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any], device: torch.device | str | None = None) -> RunningStats:
        out = cls.from_tensors(
            torch.tensor(d["count"], dtype=torch.int64, device=device),
            torch.tensor(d["mean"], dtype=_F64, device=device),
            torch.tensor(d["m2"], dtype=_F64, device=device),
        )
        if not (out.count.shape == out.mean.shape == out.m2.shape) or out.count.dim() != 1:
            raise ValuationError("checkpoint stats have inconsistent shapes")
        return out


def _finite_or_none(values: list[float]) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in values]


def batches_to_ranges(batches: set[int]) -> list[list[int]]:
    """{0,1,2,5,6} → [[0, 3], [5, 7]] (half-open ranges), the compact form stored in checkpoints."""
    out: list[list[int]] = []
    for b in sorted(batches):
        if out and out[-1][1] == b:
            out[-1][1] = b + 1
        else:
            out.append([b, b + 1])
    return out


def ranges_to_batches(ranges: list[list[int]]) -> set[int]:
    out: set[int] = set()
    for start, stop in ranges:
        out.update(range(int(start), int(stop)))
    return out


class ValuationResult:
    r"""The state of one valuation run: per-player statistics plus what is needed to reproduce and resume it.

    ``values``: :math:`\bar x_i` (or :math:`\bar x^{in}_i - \bar x^{out}_i` for MSR); ``standard_errors``:
    :math:`\sqrt{\sigma_i^2/c_i}` (MSR: :math:`\sqrt{\sigma^2_{in}/c_{in} + \sigma^2_{out}/c_{out}}`), +inf while a
    player has fewer than 2 samples; ``counts``: samples per player (MSR: in + out).

    Bookkeeping (all in the checkpoint): ``estimator`` and ``params`` (every choice that defines the numbers),
    ``seed``, ``batches`` (indices of the batches merged in; batch b's randomness comes from (seed, b) only),
    ``permutations_done`` / ``samples_done`` (permutation estimators count permutations, MSR counts coalitions),
    ``utility_evaluations``, ``utility_counts`` (what the utility reported doing for this run's evaluations,
    summed over batches: for a model utility ``models_fitted``, ``retried``, ``not_converged`` — fits whose
    float64 gradient stayed above the tolerance even after the retry — and ``constant_predictor``),
    ``truncated`` (permutations cut short by TMC truncation), ``u_full`` = U(N),
    ``u_empty`` = U(∅), ``stop_reason``, ``stopping_state`` (the stopping criteria's own state, so a resumed run
    stops exactly where an uninterrupted one would) and ``elapsed_s`` (wall time, summed over resumptions).
    """

    def __init__(
        self,
        n_players: int,
        *,
        estimator: str,
        seed: int | None = None,
        params: dict[str, Any] | None = None,
        paired: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        self.n_players = int(n_players)
        self.estimator = estimator
        self.seed = seed
        self.params: dict[str, Any] = dict(params or {})
        self.stats = RunningStats(self.n_players, device)
        self.stats_out: RunningStats | None = RunningStats(self.n_players, device) if paired else None
        self.batches: set[int] = set()
        self.permutations_done = 0
        self.samples_done = 0
        self.utility_evaluations = 0
        self.utility_counts: dict[str, int] = {}
        self.truncated = 0
        self.u_full: float | None = None
        self.u_empty: float | None = None
        self.stop_reason: str | None = None
        self.stopping_state: dict[str, Any] = {}
        self.elapsed_s = 0.0

    # --- views -------------------------------------------------------------------------------------------
    @property
    def paired(self) -> bool:
        return self.stats_out is not None

    @property
    def device(self) -> torch.device:
        return self.stats.device

    @property
    def batches_done(self) -> int:
        return len(self.batches)

    @property
    def n_draws(self) -> int:
        """Permutations (permutation estimators) plus coalitions (MSR): the unit of RelativeChange's window."""
        return self.permutations_done + self.samples_done

    @property
    def values(self) -> torch.Tensor:
        if self.stats_out is None:
            return self.stats.mean
        return self.stats.mean - self.stats_out.mean

    @property
    def counts(self) -> torch.Tensor:
        if self.stats_out is None:
            return self.stats.count
        return self.stats.count + self.stats_out.count

    def min_count(self) -> int:
        """Fewest samples any player has (MSR: the smaller of its in and out counts)."""
        c = self.stats.count if self.stats_out is None else torch.minimum(self.stats.count, self.stats_out.count)
        return int(c.min()) if c.numel() else 0

    @property
    def standard_errors(self) -> torch.Tensor:
        var = self.stats.variance_of_mean()
        if self.stats_out is not None:
            var = var + self.stats_out.variance_of_mean()
        return var.sqrt()

    @property
    def variances(self) -> torch.Tensor:
        """Per-sample variance: σ² (single stats); SE²·(c_in + c_out) for MSR."""
        if self.stats_out is None:
            return self.stats.variance()
        return self.standard_errors**2 * self.counts.to(_F64)

    @property
    def not_converged(self) -> int:
        """Model fits behind these values that did not converge (0 for utilities that fit nothing)."""
        return int(self.utility_counts.get("not_converged", 0))

    def add_counts(self, counts: dict[str, int]) -> ValuationResult:
        """Add a utility's counter deltas (see ``utility_counts``)."""
        for k, v in counts.items():
            self.utility_counts[k] = self.utility_counts.get(k, 0) + int(v)
        return self

    def max_standard_error(self) -> float:
        return float(self.standard_errors.max()) if self.n_players else 0.0

    # --- updates -----------------------------------------------------------------------------------------
    def _single(self) -> RunningStats:
        if self.stats_out is not None:
            raise ValueError("paired (MSR) results take update_subsets, not per-player samples")
        return self.stats

    def update(self, players: torch.Tensor, marginals: torch.Tensor) -> ValuationResult:
        """Add many marginals at once: ``marginals[k]`` is a sample for player ``players[k]``."""
        self._single().update(players, marginals)
        return self

    def update_dense(self, marginals: torch.Tensor) -> ValuationResult:
        """Add a (B, n) matrix: row b holds one marginal per player (e.g. one permutation)."""
        self._single().update_dense(marginals.to(self.device))
        return self

    def update_subsets(self, masks: torch.Tensor, utilities: torch.Tensor) -> ValuationResult:
        """MSR: coalition b (``masks[b]``, bool (n,)) has utility ``utilities[b]``; it is an "in" sample for its
        members and an "out" sample for everyone else."""
        if self.stats_out is None:
            raise ValueError("update_subsets needs a paired (MSR) result")
        m = masks.to(self.device, torch.bool)
        u = utilities.to(self.device, _F64)[:, None].expand(m.shape)
        self.stats.update_dense(u, m)
        self.stats_out.update_dense(u, ~m)
        return self

    # --- merging -----------------------------------------------------------------------------------------
    def _check_compatible(self, other: ValuationResult) -> None:
        if other.n_players != self.n_players:
            raise ValuationError(f"cannot merge results over {self.n_players} and {other.n_players} players")
        if other.estimator != self.estimator:
            raise ValuationError(f"cannot merge a {other.estimator} result into a {self.estimator} result")
        if other.paired != self.paired:
            raise ValuationError("cannot merge paired (MSR) and unpaired statistics")
        if self.seed is not None and other.seed is not None and other.seed != self.seed:
            raise ValuationError(f"cannot merge runs with different seeds ({self.seed} and {other.seed})")
        overlap = self.batches & other.batches
        if overlap:
            raise ValuationError(f"batches {sorted(overlap)[:5]} are in both results; merging would count them twice")

    def merge_(self, other: ValuationResult) -> ValuationResult:
        """Merge ``other`` into this result, in place (exact; see the module docstring). Returns self."""
        self._check_compatible(other)
        self.stats.merge_(other.stats)
        if self.stats_out is not None and other.stats_out is not None:
            self.stats_out.merge_(other.stats_out)
        self.batches |= other.batches
        self.permutations_done += other.permutations_done
        self.samples_done += other.samples_done
        self.utility_evaluations += other.utility_evaluations
        self.add_counts(other.utility_counts)
        self.truncated += other.truncated
        self.elapsed_s += other.elapsed_s
        if self.seed is None:
            self.seed = other.seed
        if self.u_full is None:
            self.u_full, self.u_empty = other.u_full, other.u_empty
        for k, v in other.params.items():
            self.params.setdefault(k, v)
        self.stop_reason = None
        self.stopping_state = {}
        return self

    def merge(self, other: ValuationResult) -> ValuationResult:
        """A new result holding both runs (e.g. shards from two workers); neither input changes."""
        return self.copy().merge_(other)

    def copy(self) -> ValuationResult:
        return ValuationResult.from_dict(self.to_dict(), device=self.device)

    def to(self, device: torch.device | str) -> ValuationResult:
        return ValuationResult.from_dict(self.to_dict(), device=device)

    # --- checkpoint --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able checkpoint (``json.dumps(..., allow_nan=False)`` works). ``values``,
        ``standard_errors`` and ``counts`` are derived, for readers; :meth:`from_dict` ignores them."""
        return {
            "format": FORMAT,
            "estimator": self.estimator,
            "n_players": self.n_players,
            "seed": self.seed,
            "params": dict(self.params),
            "batches": batches_to_ranges(self.batches),
            "batches_done": self.batches_done,
            "permutations_done": self.permutations_done,
            "samples_done": self.samples_done,
            "utility_evaluations": self.utility_evaluations,
            "utility_counts": dict(self.utility_counts),
            "not_converged": self.not_converged,
            "truncated": self.truncated,
            "u_full": self.u_full,
            "u_empty": self.u_empty,
            "stop_reason": self.stop_reason,
            "stopping_state": self.stopping_state,
            "elapsed_s": self.elapsed_s,
            "stats": self.stats.to_dict(),
            "stats_out": None if self.stats_out is None else self.stats_out.to_dict(),
            "values": self.values.tolist(),
            "standard_errors": _finite_or_none(self.standard_errors.tolist()),
            "counts": self.counts.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], device: torch.device | str | None = None) -> ValuationResult:
        if d.get("format") != FORMAT:
            raise ValuationError(f"not a valuation checkpoint (format {d.get('format')!r}, expected {FORMAT!r})")
        out = cls(int(d["n_players"]), estimator=d["estimator"], seed=d.get("seed"), params=d.get("params"),
                  device=device)
        out.stats = RunningStats.from_dict(d["stats"], device)
        out.stats_out = None if d.get("stats_out") is None else RunningStats.from_dict(d["stats_out"], device)
        if out.stats.n != out.n_players or (out.stats_out is not None and out.stats_out.n != out.n_players):
            raise ValuationError("checkpoint stats do not match n_players")
        out.batches = ranges_to_batches(d.get("batches", []))
        out.permutations_done = int(d.get("permutations_done", 0))
        out.samples_done = int(d.get("samples_done", 0))
        out.utility_evaluations = int(d.get("utility_evaluations", 0))
        out.utility_counts = {str(k): int(v) for k, v in (d.get("utility_counts") or {}).items()}
        out.truncated = int(d.get("truncated", 0))
        out.u_full = None if d.get("u_full") is None else float(d["u_full"])
        out.u_empty = None if d.get("u_empty") is None else float(d["u_empty"])
        out.stop_reason = d.get("stop_reason")
        out.stopping_state = dict(d.get("stopping_state") or {})
        out.elapsed_s = float(d.get("elapsed_s", 0.0))
        return out

    def __repr__(self) -> str:
        return (f"ValuationResult({self.estimator}, n_players={self.n_players}, seed={self.seed}, "
                f"batches={self.batches_done}, permutations={self.permutations_done}, samples={self.samples_done}, "
                f"max_se={self.max_standard_error():.3g}, stop_reason={self.stop_reason!r})")
