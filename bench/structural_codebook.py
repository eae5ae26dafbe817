"""What a small codebook costs S (the broker's-view mitigation of docs/structural-disparity.md), as a markdown table.

Each party sends k k-means centroids of its profile rows instead of every distinct row (app/valuation/structural/
trust.py ``quantise``). For k in (all rows, 64, 32, 16, 8): the relative change of S against all rows, over the
pairs among karate, Les Misérables, Davis' southern women, the Florentine families and a 3-block SBM, and the pairs
among 24 graphs with n = 200, m = 600 (ER, BA, WS, a 4-block SBM with p_in/p_out = 8; 6 a family): the median and
the largest; and the leave-one-out nearest-family accuracy over the 24 (each graph's nearest other graph by S must
be of its family). ``--columns 4`` drops the 4-cycle column (the profile before it) for comparison.

    .venv/bin/python bench/structural_codebook.py [--columns 4]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.valuation.structural import clean_graph, graph_from_networkx, wasserstein  # noqa: E402
from app.valuation.structural.matching import Adjacency  # noqa: E402
from app.valuation.structural.profile import profile  # noqa: E402
from app.valuation.structural.trust import quantise  # noqa: E402
from tests.valuation.structural.test_trust import (  # noqa: E402
    davis,
    family_200,
    florentine,
    karate,
    les_miserables,
    sbm3,
)


def cloud(g, k: int | None, columns: int | None) -> tuple[np.ndarray, np.ndarray]:
    x = profile(Adjacency.of(clean_graph(graph_from_networkx(g)).graphs[0])).numpy()
    if columns is not None:
        x = np.ascontiguousarray(x[:, :columns])
    c = quantise(x, np.full(len(x), 1 / len(x)), k)
    return c.rows, c.weights


def s(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    return wasserstein(torch.from_numpy(a[0]), torch.from_numpy(b[0]), torch.from_numpy(a[1]),
                       torch.from_numpy(b[1])).value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--columns", type=int, default=None, help="keep only the first N profile columns")
    a = ap.parse_args()
    t0 = time.perf_counter()
    named = [f() for f in (karate, les_miserables, davis, florentine, sbm3)]
    families = [(name, family_200(name, seed)) for name in ("er", "ba", "ws", "sbm") for seed in range(6)]
    graphs = named + [g for _, g in families]
    off = len(named)
    pairs = list(itertools.combinations(range(off), 2)) + list(itertools.combinations(range(off, len(graphs)), 2))
    full = [cloud(g, None, a.columns) for g in graphs]
    exact = {p: s(full[p[0]], full[p[1]]) for p in pairs}
    print(f"profile columns: {a.columns or 'all'}; {len(pairs)} pairs\n")
    print("| rows a party sends (k) | median relative change of S | largest relative change | leave-one-out accuracy |")
    print("|---|---|---|---|")
    for k in (None, 64, 32, 16, 8):
        clouds = full if k is None else [cloud(g, k, a.columns) for g in graphs]
        rel = [abs(s(clouds[i], clouds[j]) - exact[(i, j)]) / exact[(i, j)] for i, j in pairs]
        n = len(families)
        d = np.full((n, n), np.inf)
        for i in range(n):
            for j in range(i + 1, n):
                d[i, j] = d[j, i] = s(clouds[off + i], clouds[off + j])
        accuracy = np.mean([families[i][0] == families[int(d[i].argmin())][0] for i in range(n)])
        print(f"| {'all rows' if k is None else k} | {np.median(rel):.3f} | {max(rel):.3f} | {accuracy:.2f} |",
              flush=True)
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
