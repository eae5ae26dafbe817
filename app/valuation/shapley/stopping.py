r"""When to stop a Monte Carlo valuation: small criteria that compose with ``|`` (either) and ``&`` (both).

The estimators call :meth:`StoppingCriterion.check` once before the first batch and once after every batch;
``check`` returns True to stop. Each criterion also gives a human reason (:meth:`reason`, stored as the
result's ``stop_reason``) and a completion fraction in [0, 1] for progress bars (:meth:`completion`; ``|``
takes the largest of its parts, ``&`` the smallest). Criteria with memory (:class:`RelativeChange`,
:class:`TimeBudget`) save it in :meth:`state_dict`, which goes into the checkpoint, so a resumed run stops
exactly where the uninterrupted run would have.

- :class:`MaxStandardError` — :math:`\max_i \mathrm{SE}_i < \text{target}` once every player has at least
  ``min_count`` samples. Completion :math:`\approx (\text{target}/\max_i \mathrm{SE}_i)^2` (SE ∝ 1/√count).
- :class:`RelativeChange` — Ghorbani & Zou's rule: with :math:`\phi^{(t)}` the values after t draws,
  :math:`\max_{t-w \le s < t} \frac1n\sum_i |\phi^{(t)}_i-\phi^{(s)}_i| / (|\phi^{(t)}_i|+\epsilon) < \text{threshold}`
  (checked at batch boundaries; w = ``window`` draws: permutations, or coalitions for MSR).
- :class:`MaxPermutations`, :class:`MaxSamples` — budgets (runs end on whole batches, so they may overshoot by
  less than one batch).
- :class:`TimeBudget` — wall-clock budget over the whole job (summed across resumptions); the clock is
  injectable for tests.

**The default rule** (:func:`default_stopping`, the one the library, CLI, worker and API all use): stop when
the values have converged — mean relative change below 0.05 over the last 100 permutations (METHODS.md §3),
or, if one is given, every standard error below a target — or when a budget is spent (1,000 permutations by
default, and optionally wall time), whichever comes first; the result's ``stop_reason`` names the rule that
fired. Data Banzhaf (MSR) draws coalitions, one utility evaluation each, where one TMC permutation costs up
to n − 1 (:func:`evaluations_per_permutation`): its window and budget are the same number of utility
evaluations, 100·(n−1) and 1,000·(n−1) coalitions, so MSR and TMC get the same compute by default.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from app.valuation import defaults
from app.valuation.errors import ValuationError

if TYPE_CHECKING:
    from app.valuation.shapley.results import ValuationResult


#: the default permutation budget (a cap: the default rule stops on convergence first)
DEFAULT_MAX_PERMUTATIONS = defaults.PERMUTATIONS
#: METHODS.md §3's convergence rule: mean relative change below this over the last DEFAULT_WINDOW permutations
DEFAULT_RELATIVE_CHANGE = defaults.RELATIVE_CHANGE
DEFAULT_WINDOW = defaults.CONVERGENCE_WINDOW
#: estimators that draw permutations / coalitions (library and CLI names)
PERMUTATION_ESTIMATORS = frozenset({"tmc", "tmc_shapley", "beta", "beta_shapley", "seller", "seller_shapley"})
SUBSET_ESTIMATORS = frozenset({"banzhaf", "msr", "banzhaf_msr"})


class StoppingCriterion(ABC):
    """Base class. Subclasses implement :meth:`_check` and :meth:`completion`, and set ``self._detail``."""

    def __init__(self) -> None:
        self._detail = ""
        self._stopped = False

    @property
    def name(self) -> str:
        return type(self).__name__

    def check(self, result: ValuationResult) -> bool:
        """Update any internal state with ``result`` and say whether to stop."""
        self._stopped = bool(self._check(result))
        return self._stopped

    @abstractmethod
    def _check(self, result: ValuationResult) -> bool: ...

    @abstractmethod
    def completion(self, result: ValuationResult) -> float:
        """How far along, in [0, 1]."""

    def reason(self) -> str:
        """Why the last :meth:`check` answered as it did, e.g. ``"MaxPermutations(500): 512 >= 500"``."""
        return f"{self.name}: {self._detail}" if self._detail else self.name

    # --- run lifecycle and checkpoint state --------------------------------------------------------------
    def reset(self) -> None:
        """Forget any memory (a fresh run)."""
        self._detail = ""
        self._stopped = False

    def start(self) -> None:
        """The run (or resumed run) starts now."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; a state of another type is ignored (criterion changed on resume)."""
        return None

    def _matches(self, state: dict[str, Any]) -> bool:
        return bool(state) and state.get("type") == type(self).__name__

    # --- composition -------------------------------------------------------------------------------------
    def __or__(self, other: StoppingCriterion) -> StoppingCriterion:
        return Or(self, other)

    def __and__(self, other: StoppingCriterion) -> StoppingCriterion:
        return And(self, other)

    def __repr__(self) -> str:
        return self.name


class _Composite(StoppingCriterion):
    _op = ""

    def __init__(self, *parts: StoppingCriterion) -> None:
        super().__init__()
        flat: list[StoppingCriterion] = []
        for p in parts:
            flat.extend(p.parts if type(p) is type(self) else [p])  # type: ignore[attr-defined]
        self.parts = flat

    @property
    def name(self) -> str:
        return "(" + f" {self._op} ".join(p.name for p in self.parts) + ")"

    def _outcomes(self, result: ValuationResult) -> list[bool]:
        return [p.check(result) for p in self.parts]  # no short circuit: every part sees every result

    def reset(self) -> None:
        super().reset()
        for p in self.parts:
            p.reset()

    def start(self) -> None:
        for p in self.parts:
            p.start()

    def state_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "parts": [p.state_dict() for p in self.parts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not self._matches(state) or len(state.get("parts", [])) != len(self.parts):
            return
        for p, s in zip(self.parts, state["parts"], strict=True):
            p.load_state_dict(s)


class Or(_Composite):
    """Stop when any part says stop."""

    _op = "|"

    def _check(self, result: ValuationResult) -> bool:
        return any(self._outcomes(result))

    def reason(self) -> str:
        fired = [p.reason() for p in self.parts if p._stopped]
        return "; ".join(fired) if fired else "; ".join(p.reason() for p in self.parts)

    def completion(self, result: ValuationResult) -> float:
        return max(p.completion(result) for p in self.parts)


class And(_Composite):
    """Stop when every part says stop."""

    _op = "&"

    def _check(self, result: ValuationResult) -> bool:
        return all(self._outcomes(result))

    def reason(self) -> str:
        return "; ".join(p.reason() for p in self.parts)

    def completion(self, result: ValuationResult) -> float:
        return min(p.completion(result) for p in self.parts)


class NoStopping(StoppingCriterion):
    """Never stops (a run over an explicit list of batches)."""

    def _check(self, result: ValuationResult) -> bool:
        return False

    def completion(self, result: ValuationResult) -> float:
        return 0.0


class MaxStandardError(StoppingCriterion):
    """Stop when the largest standard error of the mean is below ``target`` and every player has at least
    ``min_count`` samples (for MSR: in each of its in/out groups)."""

    def __init__(self, target: float, min_count: int = 30) -> None:
        super().__init__()
        if not target > 0:
            raise ValueError("target must be > 0")
        self.target = float(target)
        self.min_count = max(int(min_count), 2)

    @property
    def name(self) -> str:
        return f"MaxStandardError({self.target:g})"

    def _check(self, result: ValuationResult) -> bool:
        se, cmin = result.max_standard_error(), result.min_count()
        ok = cmin >= self.min_count and se < self.target
        self._detail = f"max standard error {se:.4g} {'<' if se < self.target else '>='} {self.target:g}" + (
            "" if cmin >= self.min_count else f" (fewest samples {cmin} < {self.min_count})"
        )
        return ok

    def completion(self, result: ValuationResult) -> float:
        se, cmin = result.max_standard_error(), result.min_count()
        by_count = min(1.0, cmin / self.min_count)
        by_se = 1.0 if se < self.target else (self.target / se) ** 2 if math.isfinite(se) else 0.0
        return min(by_count, by_se)


class RelativeChange(StoppingCriterion):
    """Stop when the values moved less than ``threshold`` (mean relative change over players) across the last
    ``window`` draws. Keeps snapshots of the values at batch boundaries covering the window."""

    def __init__(self, threshold: float = 0.05, window: int = 100, eps: float = 1e-12) -> None:
        super().__init__()
        self.threshold, self.window, self.eps = float(threshold), int(window), float(eps)
        self._snapshots: list[tuple[int, torch.Tensor]] = []
        self._deviation = math.inf
        self._span = 0

    @property
    def name(self) -> str:
        return f"RelativeChange({self.threshold:g}, window={self.window})"

    def reset(self) -> None:
        super().reset()
        self._snapshots = []
        self._deviation, self._span = math.inf, 0

    def _check(self, result: ValuationResult) -> bool:
        d = result.n_draws
        if d == 0:  # nothing drawn yet: no snapshot (the zero start is not an estimate)
            self._detail = "no draws yet"
            return False
        v = result.values.detach().to("cpu", torch.float64).clone()
        snaps = [s for s in self._snapshots if s[0] < d]  # a re-check at the same draw count replaces
        snaps.append((d, v))
        while len(snaps) >= 2 and snaps[1][0] <= d - self.window:
            snaps.pop(0)  # the second-oldest already covers the window
        self._snapshots = snaps
        self._span = d - snaps[0][0]
        denom = v.abs() + self.eps
        devs = [float(((v - s).abs() / denom).mean()) for dd, s in snaps if dd < d]
        self._deviation = max(devs) if devs else math.inf
        full = self._span >= self.window
        self._detail = (f"mean relative change {self._deviation:.4g} over the last {self._span} draws"
                        + ("" if full else f" (window {self.window} not yet covered)"))
        return full and self._deviation < self.threshold

    def completion(self, result: ValuationResult) -> float:
        by_span = min(1.0, self._span / max(self.window, 1))
        dev = self._deviation
        by_dev = 1.0 if dev < self.threshold else (self.threshold / dev if math.isfinite(dev) and dev > 0 else 0.0)
        return by_span * by_dev

    def state_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "snapshots": [[d, v.tolist()] for d, v in self._snapshots]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._matches(state):
            self._snapshots = [(int(d), torch.tensor(v, dtype=torch.float64)) for d, v in state.get("snapshots", [])]


class MaxPermutations(StoppingCriterion):
    """Stop once ``n`` permutations are done."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = int(n)

    @property
    def name(self) -> str:
        return f"MaxPermutations({self.n})"

    def _check(self, result: ValuationResult) -> bool:
        self._detail = f"{result.permutations_done} permutations done"
        return result.permutations_done >= self.n

    def completion(self, result: ValuationResult) -> float:
        return 1.0 if self.n <= 0 else min(1.0, result.permutations_done / self.n)


class MaxSamples(StoppingCriterion):
    """Stop once ``n`` samples are done (coalitions for MSR; permutations for permutation estimators)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = int(n)

    @property
    def name(self) -> str:
        return f"MaxSamples({self.n})"

    def _check(self, result: ValuationResult) -> bool:
        self._detail = f"{result.n_draws} samples done"
        return result.n_draws >= self.n

    def completion(self, result: ValuationResult) -> float:
        return 1.0 if self.n <= 0 else min(1.0, result.n_draws / self.n)


class TimeBudget(StoppingCriterion):
    """Stop once ``seconds`` of wall time have passed since the job started (across resumptions).

    ``clock``: a zero-argument callable returning seconds (default :func:`time.monotonic`); tests pass a fake.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.seconds = float(seconds)
        self.clock = clock
        self._before = 0.0  # seconds spent in earlier (checkpointed) sessions
        self._t0: float | None = None

    @property
    def name(self) -> str:
        return f"TimeBudget({self.seconds:g}s)"

    def reset(self) -> None:
        super().reset()
        self._before, self._t0 = 0.0, None

    def start(self) -> None:
        self._t0 = self.clock()

    def elapsed(self) -> float:
        if self._t0 is None:
            self.start()
        return self._before + (self.clock() - self._t0)  # type: ignore[operator]

    def _check(self, result: ValuationResult) -> bool:
        e = self.elapsed()
        self._detail = f"{e:.3g}s elapsed"
        return e >= self.seconds

    def completion(self, result: ValuationResult) -> float:
        return 1.0 if self.seconds <= 0 else min(1.0, self.elapsed() / self.seconds)

    def state_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "elapsed": self.elapsed() if self._t0 is not None else self._before}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._matches(state):
            self._before = float(state.get("elapsed", 0.0))
            self._t0 = None


def evaluations_per_permutation(n_players: int) -> int:
    """Utility evaluations of one untruncated permutation walk: its prefixes 1..n−1 (U(∅) and U(N) are
    computed once per run). The exchange rate between TMC permutations and MSR coalitions."""
    return max(int(n_players) - 1, 1)


def default_stopping(
    estimator: str,
    n_players: int,
    *,
    max_permutations: int | None = None,
    max_samples: int | None = None,
    time_budget: float | None = None,
    stderr_target: float | None = None,
    relative_change: float | None = DEFAULT_RELATIVE_CHANGE,
    window: int = DEFAULT_WINDOW,
) -> StoppingCriterion:
    """The default stopping rule of a Monte Carlo estimator (see the module docstring).

    Converged — ``RelativeChange(relative_change, window)`` (None: off) or ``MaxStandardError(stderr_target)``
    (None: off) — or a budget spent: ``max_permutations`` (default 1,000) and ``time_budget`` seconds. For MSR
    (``estimator`` ``"banzhaf"``/``"msr"``/``"banzhaf_msr"``) windows and budgets are in permutation equivalents,
    ×(n−1) coalitions; ``max_samples`` gives its coalition budget directly. Permutation estimators: ``"tmc"``,
    ``"beta"``, ``"seller"`` (or their function names).
    """
    if estimator in SUBSET_ESTIMATORS:
        per = evaluations_per_permutation(n_players)
        budget: StoppingCriterion = MaxSamples(
            max_samples if max_samples is not None
            else (DEFAULT_MAX_PERMUTATIONS if max_permutations is None else max_permutations) * per)
    elif estimator in PERMUTATION_ESTIMATORS:
        if max_samples is not None:
            raise ValuationError("max_samples is a coalition budget for Data Banzhaf (MSR); use max_permutations")
        per = 1
        budget = MaxPermutations(DEFAULT_MAX_PERMUTATIONS if max_permutations is None else max_permutations)
    else:
        raise ValuationError(f"no Monte Carlo stopping rule for estimator {estimator!r}")
    parts: list[StoppingCriterion] = []
    if relative_change is not None:
        parts.append(RelativeChange(relative_change, window=window * per))
    if stderr_target is not None:
        parts.append(MaxStandardError(stderr_target))
    parts.append(budget)
    if time_budget is not None:
        parts.append(TimeBudget(time_budget))
    return parts[0] if len(parts) == 1 else Or(*parts)
