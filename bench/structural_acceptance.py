"""The acceptance numbers of issue 13 (structural part) for three ways to measure S, as markdown tables:

- **profile**: the default, the deterministic public node profile (app/valuation/structural/profile.py);
- **old proxy**: the seeded proxy graph and 16-dim random codes with the signature matcher (embedding proxy), the
  proxy spec for the pair (sized to the larger graph, the first graph's mean degree), proxy seed 0 unless varied;
- **WWL anchor**: non-blind WWL with degree labels (bench/peers/wwl.py).

Numbers: CV of S(karate, X) across 10 proxy seeds (X = BA, ER, WS of karate's size) and how often the ranking of
the three equals seed 0's; random edge rewiring (tests/valuation/structural/helpers.py ``rewire``) of karate,
Les Misérables, Davis' southern women and a 3-block SBM with unequal blocks, 0–100 % in steps of 10 %, 5 seeds:
mean per-seed Spearman of S with the fraction and mean S(10 %) / S(100 %) (``--nested``: one seeded rewiring trajectory
per seed, tests/valuation/structural/helpers.py ``rewire_nested``, so the graphs along a seed's curve are nested;
default: every fraction of every seed drawn independently); leave-one-out nearest-family accuracy
over ER, BA, WS and a 4-block SBM (p_in / p_out = 8), n = 200, m = 600, 6 graphs a family.

    .venv/bin/python bench/structural_acceptance.py [--quick] [--nested] [--first-seed 5] [--only profile]
    .venv/bin/python bench/structural_acceptance.py --loo-sets 6   # LOO on 6 disjoint sets of family graphs
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measures():
    from app.valuation.structural import (
        MatchTarget,
        clean_graph,
        default_spec,
        embed,
        graph_from_networkx,
        make_proxy,
        wasserstein,
    )
    from app.valuation.structural.matching import Adjacency
    from app.valuation.structural.profile import profile
    from bench.peers.wwl import wwl_distance

    def clean(g):
        return clean_graph(graph_from_networkx(g))

    def profile_s(a, b, seed=0):
        pa, pb = (profile(Adjacency.of(clean(g).graphs[0])).numpy() for g in (a, b))
        return wasserstein(pa, pb).value

    def proxy_s(a, b, seed=0):
        ca, cb = clean(a), clean(b)
        target = MatchTarget.of(make_proxy(default_spec(ca, cb, seed=seed)))
        return wasserstein(embed(ca, target).E, embed(cb, target).E).value

    def wwl_s(a, b, seed=0):
        return wwl_distance(a, b)

    return {"profile": profile_s, "old proxy": proxy_s, "WWL anchor": wwl_s}


def seed_numbers(measure, quick: bool) -> tuple[float, int]:
    import networkx as nx
    import numpy as np

    k = nx.karate_club_graph()
    peers = [nx.barabasi_albert_graph(34, 2, seed=1), nx.gnm_random_graph(34, 78, seed=1),
             nx.watts_strogatz_graph(34, 4, 0.1, seed=1)]
    seeds = 3 if quick else 10
    v = np.array([[measure(k, g, s) for g in peers] for s in range(seeds)])
    cv = float(np.max(v.std(axis=0) / v.mean(axis=0)))
    same = int(sum((np.argsort(row) == np.argsort(v[0])).all() for row in v))
    return cv, same


def rewiring_numbers(measure, g, quick: bool, nested: bool = False, first_seed: int = 0) -> tuple[float, float]:
    import numpy as np
    from scipy.stats import spearmanr

    from tests.valuation.structural.helpers import rewire, rewire_nested

    fr = np.linspace(0, 1, 11)
    seeds = range(first_seed, first_seed + (2 if quick else 5))
    if nested:  # one seeded rewiring trajectory per seed: the graphs along a seed's curve are nested
        curves = np.array([[measure(g, h) for h in rewire_nested(g, fr, s)] for s in seeds])
    else:  # every fraction of every seed drawn independently (seed 1000·s + i)
        curves = np.array([[measure(g, rewire(g, f, 1000 * s + i)) for i, f in enumerate(fr)] for s in seeds])
    rho = float(np.mean([spearmanr(fr, c).statistic for c in curves]))
    return rho, float(np.mean(curves[:, 1] / curves[:, -1]))


def loo_accuracy(measure, quick: bool) -> float:

    from tests.valuation.structural.test_trust import family_200

    per = 3 if quick else 6
    return nearest_family_accuracy(measure, [(name, family_200(name, s)) for name in ("er", "ba", "ws", "sbm")
                                             for s in range(per)])


def nearest_family_accuracy(measure, graphs: list) -> float:
    """Leave-one-out accuracy of the nearest graph's family, ``graphs`` (family, graph) pairs."""
    return nearest_family_misses(measure, graphs)[0]


def nearest_family_misses(measure, graphs: list) -> tuple[float, list[tuple[str, str]]]:
    """(leave-one-out accuracy, the (family, nearest graph's family) of every miss)."""
    import numpy as np

    n = len(graphs)
    d = np.full((n, n), np.inf)
    for i in range(n):
        for j in range(i + 1, n):
            d[i, j] = d[j, i] = measure(graphs[i][1], graphs[j][1])
    nearest = d.argmin(axis=1)
    misses = [(graphs[i][0], graphs[nearest[i]][0]) for i in range(n) if graphs[i][0] != graphs[nearest[i]][0]]
    return 1.0 - len(misses) / n, misses


def loo_seed_sets(sets: int) -> str:
    """The profile's leave-one-out accuracy on ``sets`` disjoint sets of family graphs (seeds 0–5, 6–11, …)."""
    from tests.valuation.structural.test_trust import family_200

    profile_s = measures()["profile"]
    lines = ["| family seeds | LOO accuracy | misses (family → nearest graph's family) |", "|---|---|---|"]
    accs = []
    for k in range(sets):
        seeds = range(6 * k, 6 * k + 6)
        graphs = [(name, family_200(name, s)) for name in ("er", "ba", "ws", "sbm") for s in seeds]
        acc, misses = nearest_family_misses(profile_s, graphs)
        accs.append(acc)
        lines.append(f"| {seeds.start}–{seeds.stop - 1} | {acc:.3f} | "
                     + (", ".join(f"{a} → {b}" for a, b in misses) or "none") + " |")
    lines.append(f"| mean of {sets} | {sum(accs) / sets:.3f} | |")
    return "\n".join(lines)


def acceptance_tables(quick: bool = False, nested: bool = False, first_seed: int = 0,
                      only: list[str] | None = None) -> str:
    from tests.valuation.structural.test_trust import davis, karate, les_miserables, sbm3

    graphs = {"karate": karate(), "Les Misérables": les_miserables(), "Davis": davis(), "SBM3": sbm3()}
    head = ["measure", "CV over proxy seeds (max of BA/ER/WS)", "ranking = seed 0's",
            *(f"{g}: Spearman / S10%÷S100%" for g in graphs), "LOO accuracy", "seconds"]
    rows = []
    for name, measure in measures().items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        cv, same = seed_numbers(measure, quick)
        rw = [rewiring_numbers(measure, g, quick, nested, first_seed) for g in graphs.values()]
        acc = loo_accuracy(measure, quick)
        rows.append([name, f"{cv:.3f}", f"{same}/{3 if quick else 10}", *(f"{r:.3f} / {q:.2f}" for r, q in rw),
                     f"{acc:.2f}", f"{time.perf_counter() - t0:.1f}"])
    reading = "nested: one rewiring trajectory per seed" if nested else "independent: every fraction drawn afresh"
    seeds = f"seeds {first_seed}–{first_seed + (1 if quick else 4)}"
    lines = [f"## 5. Acceptance numbers: profile (default) vs old seeded proxy vs WWL anchor ({reading}; {seeds})\n",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("\nTargets (issue 13): CV ≤ 0.05, ranking ≥ 9/10, Spearman ≥ 0.95, S10%÷S100% ≤ 0.40, "
                 "LOO ≥ 0.95.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--nested", action="store_true",
                    help="rewiring: one seeded trajectory per seed (tests/valuation/structural/helpers.py "
                         "rewire_nested) instead of an independent draw for every fraction")
    ap.add_argument("--first-seed", type=int, default=0, help="rewiring seeds first-seed … first-seed + 4")
    ap.add_argument("--only", nargs="*", choices=["profile", "old proxy", "WWL anchor"],
                    help="measure only these (the old proxy takes minutes)")
    ap.add_argument("--loo-sets", type=int, default=0,
                    help="instead: the profile's leave-one-out accuracy on this many disjoint sets of 6 seeds")
    args = ap.parse_args()
    if args.loo_sets:
        print(loo_seed_sets(args.loo_sets))
        return
    print(acceptance_tables(args.quick, args.nested, args.first_seed, args.only))


if __name__ == "__main__":
    main()
