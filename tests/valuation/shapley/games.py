"""Small constructed games as ``Utility`` subclasses (no models), plus brute-force references."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch

from app.valuation.shapley.base import Utility

F64 = torch.float64


class Game(Utility):
    """U(T) = fn(masks as float64 (B, n)); counts calls and evaluated coalitions."""

    def __init__(self, n: int, fn: Callable[[torch.Tensor], torch.Tensor], device: str | torch.device = "cpu",
                 on_call: Callable[[int], None] | None = None) -> None:
        self.n_players = n
        self.fn = fn
        self.device = torch.device(device)
        self.calls = 0
        self.evaluations = 0
        self.on_call = on_call

    def values(self, masks: torch.Tensor) -> torch.Tensor:
        assert masks.dtype == torch.bool and masks.shape[1] == self.n_players
        assert masks.device.type == self.device.type
        self.calls += 1
        self.evaluations += masks.shape[0]
        if self.on_call is not None:
            self.on_call(masks.shape[0])
        return self.fn(masks.to(F64)).to(F64)


def voting(weights: list[float], quota: float, **kw) -> Game:
    w = torch.tensor(weights, dtype=F64)
    return Game(len(weights), lambda m: (m @ w.to(m.device) >= quota).to(F64), **kw)


def symmetric(n: int, f: Callable[[torch.Tensor], torch.Tensor], **kw) -> Game:
    return Game(n, lambda m: f(m.sum(1)), **kw)


def additive(weights: list[float], **kw) -> Game:
    w = torch.tensor(weights, dtype=F64)
    return Game(len(weights), lambda m: m @ w.to(m.device), **kw)


def glove(n_left: int, n_right: int, **kw) -> Game:
    """Left-glove owners 0..L−1, right-glove owners L..L+R−1; a pair is worth 1."""
    return Game(n_left + n_right,
                lambda m: torch.minimum(m[:, :n_left].sum(1), m[:, n_left:].sum(1)), **kw)


def sqrt_game(weights: list[float], **kw) -> Game:
    """U(T) = sqrt(Σ_{i∈T} w_i): submodular, non-trivial values."""
    w = torch.tensor(weights, dtype=F64)
    return Game(len(weights), lambda m: torch.sqrt(m @ w.to(m.device)), **kw)


def table_game(n: int, seed: int = 0, **kw) -> Game:
    """An arbitrary game: U(T) = a random number per coalition (U(∅) = 0)."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(1 << n, generator=g, dtype=F64)
    table[0] = 0.0
    bits = 2 ** torch.arange(n)

    def fn(m: torch.Tensor) -> torch.Tensor:
        codes = (m.to(torch.int64) * bits.to(m.device)).sum(1)
        return table.to(m.device)[codes]

    return Game(n, fn, **kw)


def u_of(game: Utility, members) -> float:
    m = torch.zeros((1, game.n_players), dtype=torch.bool, device=game.device)
    m[0, list(members)] = True
    return float(game.values(m)[0])


def brute_shapley_permutations(game: Utility) -> list[float]:
    """Definition: average marginal over all n! orderings (n ≤ 7)."""
    n = game.n_players
    cache: dict[frozenset, float] = {}

    def u(s: frozenset) -> float:
        if s not in cache:
            cache[s] = u_of(game, s)
        return cache[s]

    phi = [0.0] * n
    perms = list(itertools.permutations(range(n)))
    for perm in perms:
        s: frozenset = frozenset()
        for i in perm:
            t = s | {i}
            phi[i] += u(t) - u(s)
            s = t
    return [p / len(perms) for p in phi]


def brute_semivalue(game: Utility, weight: Callable[[int, int], float]) -> list[float]:
    """Σ_{T⊆N∖{i}} weight(n, |T|)·(U(T∪i) − U(T)), by itertools.combinations."""
    n = game.n_players
    cache: dict[frozenset, float] = {}

    def u(s: frozenset) -> float:
        if s not in cache:
            cache[s] = u_of(game, s)
        return cache[s]

    phi = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        total = 0.0
        for k in range(n):
            for t in itertools.combinations(others, k):
                ts = frozenset(t)
                total += weight(n, k) * (u(ts | {i}) - u(ts))
        phi.append(total)
    return phi


def shapley_weight(n: int, k: int) -> float:
    return math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)


def beta_weight(alpha: float, beta: float) -> Callable[[int, int], float]:
    def lbeta(a: float, b: float) -> float:
        return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)

    return lambda n, k: math.exp(lbeta(k + beta, n - k - 1 + alpha) - lbeta(alpha, beta))


def banzhaf_weight(n: int, k: int) -> float:
    return 2.0 ** (-(n - 1))
