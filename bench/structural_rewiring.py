"""Issue 13's rewiring acceptance for candidate changes to the node profile: both readings of "per seed", two seed
sets, and the leave-one-out family accuracy, as one markdown table.

The acceptance: under random edge rewiring (0–100 % in steps of 10 %) of karate, Les Misérables, Davis' southern
women and a 3-block SBM with unequal blocks, mean per-seed Spearman of S with the fraction ≥ 0.95 and mean
S(10 %) / S(100 %) ≤ 0.40; and leave-one-out nearest-family accuracy ≥ 0.95 over ER / BA / WS / 4-block SBM
(n = 200, m = 600, 6 graphs a family). Readings of "per seed":

- **nested**: one seeded rewiring trajectory per seed (tests/valuation/structural/helpers.py ``rewire_nested``):
  the graphs along a seed's curve are nested, the edges rewired at 10 % are among those rewired at 20 %;
- **independent**: every fraction of every seed drawn afresh (``rewire`` with seed 1000·s + i, the tests' reading).

Seed sets: the tests' seeds 0–4 (LOO graphs seeds 0–5) and held-out seeds 5–9 (LOO graphs seeds 6–11), so that a
change tuned on the first set is checked on the second. Variants (none is the default; the column functions are
here, not in the app):

- ``default``: the profile as it is (app/valuation/structural/profile.py);
- ``+assortativity``: triangle scale 1 and two more columns, each smoothed by 3 WWL rounds: 7 × the node's mean
  over its edges of z_v·z_u (z the degree standardised by the edge-end mean and deviation: the edge terms of
  degree assortativity, which move like a mixture under rewiring) and 3 × the mean of |ln d_v − ln d_u|: the best
  of a grid over its rounds (1–4), scales (2–9) and the triangle scale, chosen on seeds 0–4;
- ``+signed 2-colouring``: a column with the share of a node's neighbours of opposite sign after 8 rounds of
  h ← ½(h − mean of neighbours' h) from ln(1 + d) (a local approximate 2-colouring; exact, sorted sums);
- ``degree-weighted rows``: the default rows, each node weighing d_v / 2m instead of 1 / n;
- ``+edge cloud``: S = W₁ between the two graphs' edge clouds (one row per edge: the sorted pair of its ends'
  ln(1 + d)) + 0.3 × the default S (a protocol change, measured only);
- ``oracle`` (Davis only): the default rows plus 3 × the share of a node's neighbours on the other side of Davis'
  known bipartition, which no party could compute; it shows what a bipartiteness signal would give;
- ``edit distance`` (karate and Davis only; non-blind): the edge edit distance min_π |E(G) Δ π(E(H))| / m,
  approximated from above by FAQ graph matching (scipy ``quadratic_assignment``, 20 random starts, never the
  identity): an isomorphism-invariant distance that sees both whole graphs, so it bounds what any blind S (which
  is invariant too) can be expected to show. FAQ does not recover the identity of a 200-node graph with itself,
  so the larger graphs are left out.

The acceptance's graphs have 32–200 nodes; ``--graphs larger`` measures the same on k disjoint copies of karate,
Davis and SBM3 (the same distribution of rows, k times the nodes), to tell the sample size from the structure.

    .venv/bin/python bench/structural_rewiring.py [--variants default,+assortativity] [--no-loo] [--graphs larger]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
from scipy.optimize import quadratic_assignment  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from app.valuation.structural import clean_graph, graph_from_networkx, wasserstein  # noqa: E402
from app.valuation.structural.matching import Adjacency  # noqa: E402
from app.valuation.structural.profile import ProfileSpec, profile, sorted_row_sums  # noqa: E402
from bench.structural_acceptance import nearest_family_accuracy  # noqa: E402
from tests.valuation.structural.helpers import disjoint_copies, rewire, rewire_nested  # noqa: E402
from tests.valuation.structural.test_trust import davis, family_200, karate, les_miserables, sbm3  # noqa: E402

FRACTIONS = np.linspace(0.0, 1.0, 11)
GRAPHS = {"karate": karate, "Les Misérables": les_miserables, "SBM3": sbm3, "Davis": davis}
# The same local structure with more nodes (--graphs larger): k disjoint copies have exactly the rows' distribution
# of the original, so any change in the numbers comes from the sample size alone.
LARGER = {"karate ×4": lambda: disjoint_copies(karate(), 4), "karate ×8": lambda: disjoint_copies(karate(), 8),
          "Davis ×4": lambda: disjoint_copies(davis(), 4), "Davis ×8": lambda: disjoint_copies(davis(), 8),
          "SBM3 ×2": lambda: disjoint_copies(sbm3(), 2), "SBM3 at 800 nodes": lambda: sbm3(4)}
SEED_SETS = {"seeds 0–4": (range(0, 5), range(0, 6)), "seeds 5–9": (range(5, 10), range(6, 12))}


def adjacency(g: nx.Graph) -> Adjacency:
    return Adjacency.of(clean_graph(graph_from_networkx(g)).graphs[0])


def smoothed(adj: Adjacency, values: np.ndarray, rounds: int) -> np.ndarray:
    d = adj.degree.astype(float)
    has, safe = d > 0, np.where(d > 0, d, 1.0)
    h = values
    for _ in range(rounds):
        h = np.where(has, 0.5 * (h + sorted_row_sums(adj, h[adj.indices]) / safe), h)
    return h


def edge_mean(adj: Adjacency, per_edge: np.ndarray) -> np.ndarray:
    d = adj.degree.astype(float)
    return sorted_row_sums(adj, per_edge) / np.where(d > 0, d, 1.0)


def assortativity_columns(adj: Adjacency) -> np.ndarray:
    d = adj.degree.astype(float)
    rows, cols = adj.rows, adj.indices
    mu = (d * d).sum() / d.sum()
    sd = np.sqrt(max((d**3).sum() / d.sum() - mu * mu, 1e-300))
    z = (d - mu) / sd
    assort = smoothed(adj, edge_mean(adj, z[rows] * z[cols]), 3)
    contrast = smoothed(adj, edge_mean(adj, np.abs(np.log(d[rows]) - np.log(d[cols]))), 3)
    return np.column_stack([7.0 * assort, 3.0 * contrast])


def signed_share(adj: Adjacency, rounds: int = 8) -> np.ndarray:
    d = adj.degree.astype(float)
    has, safe = d > 0, np.where(d > 0, d, 1.0)
    h = np.log1p(d)
    for _ in range(rounds):
        h = np.where(has, 0.5 * (h - sorted_row_sums(adj, h[adj.indices]) / safe), h)
    s = np.sign(h)
    return edge_mean(adj, (s[adj.rows] * s[adj.indices] < 0).astype(float))


def edge_rows(adj: Adjacency) -> np.ndarray:
    ld = np.log1p(adj.degree.astype(float))
    rows, cols = adj.rows, adj.indices
    keep = rows < cols
    a, b = ld[rows[keep]], ld[cols[keep]]
    return np.column_stack([np.minimum(a, b), np.maximum(a, b)])


def davis_side(adj: Adjacency) -> np.ndarray:
    g = nx.davis_southern_women_graph()
    side = np.array([g.nodes[v]["bipartite"] for v in g])
    return edge_mean(adj, (side[adj.rows] != side[adj.indices]).astype(float))


def default_rows(adj: Adjacency) -> np.ndarray:
    return profile(adj).numpy()


def node_measure(rows_of, weights_of=None):
    def s(a: Adjacency, b: Adjacency) -> float:
        wa = None if weights_of is None else weights_of(a)
        wb = None if weights_of is None else weights_of(b)
        return wasserstein(rows_of(a), rows_of(b), wa, wb).value

    return s


def degree_weights(adj: Adjacency) -> np.ndarray:
    d = adj.degree.astype(float)
    return d / d.sum()


def edge_cloud(a: Adjacency, b: Adjacency) -> float:
    return wasserstein(edge_rows(a), edge_rows(b)).value + 0.3 * wasserstein(default_rows(a), default_rows(b)).value


def edit_distance(a: Adjacency, b: Adjacency, starts: int = 20) -> float:
    # edges, not weights, are counted
    x, y = (Adjacency(g.n, g.indptr, g.indices, None).dense() for g in (a, b))
    rng = np.random.default_rng(0)
    options = {"maximize": True, "P0": "randomized", "rng": rng}
    # trace(A P B Pᵀ) = 2 × the edges the two graphs share under π
    overlap = max(quadratic_assignment(x, y, method="faq", options=options).fun for _ in range(starts))
    edges = (x.sum() + y.sum()) / 2
    return float((edges - overlap) / (edges / 2))


VARIANTS = {
    "default": node_measure(default_rows),
    "+assortativity": node_measure(
        lambda a: np.column_stack([profile(a, ProfileSpec(2, 1.0, 1.0)).numpy(), assortativity_columns(a)])),
    "+signed 2-colouring": node_measure(lambda a: np.column_stack([default_rows(a), signed_share(a)])),
    "degree-weighted rows": node_measure(default_rows, degree_weights),
    "+edge cloud": edge_cloud,
    "oracle": node_measure(lambda a: np.column_stack([default_rows(a), 3.0 * davis_side(a)])),
    "edit distance": edit_distance,
}
# Variants measured on some graphs only, and without the leave-one-out accuracy.
ONLY = {"oracle": {"Davis"}, "edit distance": {"karate", "Davis"}}


def trajectories(seeds: range, graphs: dict) -> dict[str, tuple[Adjacency, dict[str, list[list[Adjacency]]]]]:
    out = {}
    for name, make in graphs.items():
        g = make()
        nested = [[adjacency(h) for h in rewire_nested(g, FRACTIONS, s)] for s in seeds]
        indep = [[adjacency(rewire(g, f, 1000 * s + i)) for i, f in enumerate(FRACTIONS)] for s in seeds]
        out[name] = (adjacency(g), {"nested": nested, "independent": indep})
    return out


def curve_numbers(measure, base: Adjacency, runs: list[list[Adjacency]]) -> tuple[float, float]:
    curves = np.array([[measure(base, a) for a in run] for run in runs])
    rho = float(np.mean([spearmanr(FRACTIONS, c).statistic for c in curves]))
    return rho, float(np.mean(curves[:, 1] / curves[:, -1]))


def loo(measure, graphs: list[tuple[str, Adjacency]]) -> float:
    return nearest_family_accuracy(measure, graphs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", type=str, default=",".join(VARIANTS))
    ap.add_argument("--no-loo", action="store_true")
    ap.add_argument("--graphs", choices=("acceptance", "larger"), default="acceptance",
                    help="the acceptance's four graphs, or disjoint copies of karate, Davis and SBM3 (more nodes)")
    args = ap.parse_args()
    names = args.variants.split(",")
    graphs = GRAPHS if args.graphs == "acceptance" else LARGER
    data = {k: trajectories(seeds, graphs) for k, (seeds, _) in SEED_SETS.items()}
    fams = {k: [(f, adjacency(family_200(f, s))) for f in ("er", "ba", "ws", "sbm") for s in loo_seeds]
            for k, (_, loo_seeds) in SEED_SETS.items()}
    head = ["variant", "seeds", "reading", *(f"{g}: Spearman / S10%÷S100%" for g in graphs), "LOO"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for name in names:
        measure = VARIANTS[name]
        for seeds in SEED_SETS:
            acc = "" if args.no_loo or name in ONLY else f"{loo(measure, fams[seeds]):.2f}"
            for reading in ("nested", "independent"):
                cells = []
                for g, (base, runs) in data[seeds].items():
                    if name in ONLY and g not in ONLY[name]:
                        cells.append("")
                        continue
                    rho, ratio = curve_numbers(measure, base, runs[reading])
                    cells.append(f"{rho:.3f} / {ratio:.2f}")
                print(f"| {name} | {seeds} | {reading} | " + " | ".join(cells)
                      + f" | {acc if reading == 'nested' else ''} |", flush=True)


if __name__ == "__main__":
    main()
