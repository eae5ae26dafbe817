"""Issue 13, structural part: a structural disparity a buyer can trust.

The default embedding is the deterministic public node profile (profile.py); S = exact W₁ between the two
weighted profile clouds (or their codebooks, with a bracket); a bootstrap interval comes with every S.

Rewiring throughout is *random edge rewiring* (tests/valuation/structural/helpers.py ``rewire``): a fraction of
the edges each keep one end, chosen at random, and move the other to a uniformly random node (not degree
preserving; at 100 % the graph is close to an Erdős–Rényi graph with the same number of edges).
"""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import ot
import pytest
from scipy.stats import spearmanr

from app.shares.graphs import read_graph_scoring_shares, write_graph_share
from app.valuation.structural import (
    GraphOptions,
    clean_graph,
    graph_from_networkx,
    graph_request,
    graph_score,
    graph_share,
    value_graphs,
    wasserstein,
)
from app.valuation.structural.matching import Adjacency
from app.valuation.structural.profile import ProfileSpec, profile, short_cycles, triangles
from app.valuation.structural.trust import bootstrap_interval, quantise
from tests.valuation.structural.helpers import disjoint_copies, relabel, rewire, rewire_nested

NONE = GraphOptions(feature_view="none", replicates=0)


def karate() -> nx.Graph:
    return nx.karate_club_graph()


def les_miserables() -> nx.Graph:
    return nx.convert_node_labels_to_integers(nx.les_miserables_graph())


def davis() -> nx.Graph:
    return nx.convert_node_labels_to_integers(nx.davis_southern_women_graph())


def florentine() -> nx.Graph:
    return nx.convert_node_labels_to_integers(nx.florentine_families_graph())


def sbm3(k: int = 1) -> nx.Graph:
    """Three blocks of unequal size and density (100, 60, 40 nodes; p_in 0.08, 0.15, 0.3; p_out 0.01); ``k`` > 1:
    k times the nodes with the same block shares and expected degrees (every probability divided by k)."""
    probs = [[p / k for p in row] for row in [[0.08, 0.01, 0.01], [0.01, 0.15, 0.01], [0.01, 0.01, 0.3]]]
    return nx.convert_node_labels_to_integers(nx.stochastic_block_model([100 * k, 60 * k, 40 * k], probs, seed=5))


def S(a: nx.Graph, b: nx.Graph, options: GraphOptions = NONE) -> float:
    return value_graphs(graph_from_networkx(a), [graph_from_networkx(b)], options).results[0].structural_disparity


def rows(g: nx.Graph) -> np.ndarray:
    return profile(Adjacency.of(clean_graph(graph_from_networkx(g)).graphs[0])).numpy()


# --- the profile against independent references ---------------------------------------------------------------


def four_cycles_by_enumeration(g: nx.Graph) -> np.ndarray:
    """4-cycles through each node, from networkx's enumeration of the graph's simple cycles."""
    out = np.zeros(g.number_of_nodes())
    for cycle in nx.simple_cycles(g, length_bound=4):
        if len(cycle) == 4:
            out[cycle] += 1
    return out


@pytest.mark.parametrize("make", [lambda: nx.karate_club_graph(), lambda: nx.davis_southern_women_graph(),
                                  lambda: nx.grid_2d_graph(4, 5), lambda: nx.complete_graph(6),
                                  lambda: nx.gnm_random_graph(60, 240, seed=3)])
def test_short_cycles_against_enumeration(make):
    g = nx.convert_node_labels_to_integers(make())
    tri, sq = short_cycles(Adjacency.of(clean_graph(graph_from_networkx(g)).graphs[0]))
    np.testing.assert_array_equal(tri, [nx.triangles(g)[v] for v in range(g.number_of_nodes())])
    np.testing.assert_array_equal(sq, four_cycles_by_enumeration(g))


def test_profile_columns_against_networkx():
    g = les_miserables()
    x = rows(g)
    deg = np.array([g.degree(v) for v in range(g.number_of_nodes())], dtype=float)
    np.testing.assert_allclose(x[:, 0], np.log1p(deg), rtol=1e-14)
    h1 = 0.5 * (np.log1p(deg) + np.array([np.mean([np.log1p(deg[u]) for u in g[v]]) for v in g]))
    np.testing.assert_allclose(x[:, 1], h1, rtol=1e-13)
    tri = nx.triangles(g)
    h2 = 0.5 * (h1 + np.array([np.mean([h1[u] for u in g[v]]) for v in g]))
    np.testing.assert_allclose(x[:, 2], h2, rtol=1e-13)
    np.testing.assert_array_equal(x[:, 3], 0.5 * np.log1p([tri[v] for v in range(g.number_of_nodes())]))
    np.testing.assert_array_equal(x[:, 4], np.log1p(four_cycles_by_enumeration(g)))
    weighted = clean_graph(graph_from_networkx(g, weight="weight")).graphs[0]
    strength = np.array([g.degree(v, weight="weight") for v in range(g.number_of_nodes())], dtype=float)
    np.testing.assert_allclose(profile(Adjacency.of(weighted)).numpy()[:, 0], np.log1p(strength), rtol=1e-14)
    np.testing.assert_array_equal(triangles(Adjacency.of(weighted)), [tri[v] for v in range(g.number_of_nodes())])


# --- the properties of a disparity --------------------------------------------------------------------------------

GRAPHS = {"karate": karate, "les_miserables": les_miserables, "davis": davis, "florentine": florentine,
          "sbm3": sbm3}


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_zero_on_itself_and_invariant_to_relabelling(name):
    g = GRAPHS[name]()
    assert S(g, g) == 0.0
    assert S(g, relabel(g, 3)) == 0.0  # bit-identical profiles: sums in sorted order, integer triangle counts
    assert S(g, rewire(g, 0.3, 1)) > 0


def test_symmetric():
    pairs = [(karate(), les_miserables()), (florentine(), davis()),
             (nx.gnm_random_graph(150, 450, seed=1), nx.barabasi_albert_graph(300, 2, seed=2))]
    for a, b in pairs:
        ab, ba = S(a, b), S(b, a)
        assert ab > 0 and abs(ab - ba) <= 0.01 * ab  # in fact equal: nothing depends on which side is the buyer
        assert ab == ba


def test_the_same_alone_and_in_a_job_with_other_sellers():
    options = GraphOptions(feature_view="none", replicates=30)
    buyer, seller = graph_from_networkx(karate()), graph_from_networkx(florentine())
    others = [graph_from_networkx(les_miserables()), graph_from_networkx(nx.barabasi_albert_graph(600, 3, seed=1))]
    alone = value_graphs(buyer, [seller], options)
    crowd = value_graphs(buyer, [others[0], seller, others[1]], options)
    a, c = alone.results[0], crowd.results[1]
    assert a.structural_disparity == c.structural_disparity > 0
    assert a.interval == c.interval and a.bracket == c.bracket
    assert alone.request == crowd.request  # the public request does not depend on the job's graphs


def test_seed_has_no_effect_and_generator_seeds_are_stable():
    """No proxy, no random code: the seed changes nothing (CV 0 across 10 seeds, the same ranking in 10 of 10).
    Across 10 *generator* seeds of BA/ER/WS graphs of karate's size, S from karate varies by the graphs' own
    randomness only (measured CV 0.07–0.16)."""
    k = karate()
    n, m = k.number_of_nodes(), k.number_of_edges()
    peers = {"ba": nx.barabasi_albert_graph(n, 2, seed=1), "er": nx.gnm_random_graph(n, m, seed=1),
             "ws": nx.watts_strogatz_graph(n, 4, 0.1, seed=1)}
    by_seed = np.array([[S(k, g, GraphOptions(feature_view="none", replicates=0, seed=s)) for g in peers.values()]
                        for s in range(10)])
    assert (by_seed == by_seed[0]).all() and (by_seed > 0).all()
    gens = {"ba": lambda s: nx.barabasi_albert_graph(n, 2, seed=s), "er": lambda s: nx.gnm_random_graph(n, m, seed=s),
            "ws": lambda s: nx.watts_strogatz_graph(n, 4, 0.1, seed=s)}
    for name, gen in gens.items():
        values = np.array([S(k, gen(s)) for s in range(10)])
        assert values.std() / values.mean() <= 0.2, (name, values)


# --- S grows with structural change --------------------------------------------------------------------------------

FRACTIONS = np.linspace(0.0, 1.0, 11)


def rewiring_curves(g: nx.Graph, seeds: int = 5) -> np.ndarray:
    e0 = rows(g)
    return np.array([[wasserstein(e0, rows(rewire(g, f, 1000 * seed + i))).value for i, f in enumerate(FRACTIONS)]
                     for seed in range(seeds)])


def rewiring_numbers(g: nx.Graph) -> tuple[float, float]:
    """(mean per-seed Spearman of S with the fraction, mean over seeds of S(10 %) / S(100 %))."""
    curves = rewiring_curves(g)
    assert (curves[:, 0] == 0).all()
    rho = float(np.mean([spearmanr(FRACTIONS, c).statistic for c in curves]))
    return rho, float(np.mean(curves[:, 1] / curves[:, -1]))


def test_nested_rewiring_is_one_trajectory():
    """rewire_nested: the edge count is kept, 0 % is the graph itself, and each fraction's graph is the previous
    one with only the next edges of one seeded order rewired (at most that many edges moved: one trajectory, where
    independent draws would differ in about a fraction's worth of edges); the same seed gives the same graphs."""
    g = karate()
    m = g.number_of_edges()
    edges = [{frozenset(e) for e in h.edges()} for h in rewire_nested(g, FRACTIONS, 3)]
    assert all(len(e) == m for e in edges) and edges[0] == {frozenset(e) for e in g.edges()}
    steps = np.diff([round(f * m) for f in FRACTIONS])
    assert all(len(a - b) <= k for a, b, k in zip(edges, edges[1:], steps, strict=False))
    assert len(edges[0] - edges[-1]) > 0.7 * m
    assert edges == [{frozenset(e) for e in h.edges()} for h in rewire_nested(g, FRACTIONS, 3)]


# Measured (5 seeds, Spearman / ratio): karate 0.929 / 0.32, Les Misérables 0.991 / 0.24, SBM3 0.922 / 0.36,
# Davis 0.911 / 0.43; bench/structural.py has the WWL anchor's and the old proxy's numbers next to these. Read as
# one rewiring trajectory per seed (rewire_nested; bench/structural_acceptance.py --nested) the target is not met
# either: karate 0.915 / 0.42, Les Misérables 0.996 / 0.21, SBM3 0.960 / 0.37, Davis 0.878 / 0.39 (seeds 0-4);
# docs/structural-disparity.md has both readings on held-out seeds and the profile changes tried.
MEETS = {"les_miserables": les_miserables}
SHORT = {"karate": (karate, 0.91, 0.35), "sbm3": (sbm3, 0.90, 0.4), "davis": (davis, 0.89, 0.45)}


@pytest.mark.parametrize("name", sorted(MEETS))
def test_rewiring_meets_the_acceptance(name):
    rho, ratio = rewiring_numbers(MEETS[name]())
    assert rho >= 0.95 and ratio <= 0.4, (rho, ratio)


@pytest.mark.parametrize("name", sorted(SHORT))
def test_rewiring_where_the_acceptance_is_not_met_yet(name):
    """Karate's and the SBM's curves flatten above ~70 % (the graph is random by then and per-node noise of 34
    or 200 rows dominates); Davis' bipartite graph gains many triangles from its first rewired edges (two women
    who share events) and loses its 4-cycles, so S rises steeply at first and flattens above ~50 %. These bounds
    are what the profile achieves (a regression guard), below the issue's Spearman 0.95 (and, for Davis, ratio
    0.40); the strict xfail below fails as soon as the acceptance is met."""
    make, rho_min, ratio_max = SHORT[name]
    rho, ratio = rewiring_numbers(make())
    assert rho >= rho_min and ratio <= ratio_max, (rho, ratio)


# The shortfall is the graphs' size, not their structure: k disjoint copies of a graph have exactly its
# distribution of profile rows, and with 8 copies of karate and of Davis (272 and 256 nodes) and 2 of SBM3
# (400 nodes) the same rewiring meets the acceptance (measured: 0.971 / 0.24, 0.969 / 0.18, 0.976 / 0.26; both
# readings and seed sets in bench/structural_rewiring.py --graphs larger).
LARGER = {"karate x8": (karate, 8), "davis x8": (davis, 8), "sbm3 x2": (sbm3, 2)}


@pytest.mark.parametrize("name", sorted(LARGER))
def test_rewiring_meets_the_acceptance_with_more_nodes_of_the_same_structure(name):
    make, copies = LARGER[name]
    rho, ratio = rewiring_numbers(disjoint_copies(make(), copies))
    assert rho >= 0.95 and ratio <= 0.4, (rho, ratio)


@pytest.mark.xfail(strict=True, reason="acceptance (Spearman >= 0.95, 10%/100% <= 0.4) not met on karate, "
                                       "SBM3 and Davis (32-200 nodes; met with more nodes of the same structure)")
def test_rewiring_acceptance_on_karate_sbm3_and_davis():
    for make, _, _ in SHORT.values():
        rho, ratio = rewiring_numbers(make())
        assert rho >= 0.95 and ratio <= 0.4


# --- S separates graph families -------------------------------------------------------------------------------------


def family_200(name: str, seed: int) -> nx.Graph:
    """n = 200, m = 600 (mean degree 6) from ER, BA, WS, or a 4-block SBM with p_in / p_out = 8."""
    if name == "er":
        return nx.gnm_random_graph(200, 600, seed=seed)
    if name == "ba":
        return nx.barabasi_albert_graph(200, 3, seed=seed)
    if name == "ws":
        return nx.watts_strogatz_graph(200, 6, 0.1, seed=seed)
    p_out = 6 / (8 * 49 + 150)  # expected degree 49·p_in + 150·p_out = 6
    probs = [[8 * p_out if i == j else p_out for j in range(4)] for i in range(4)]
    return nx.convert_node_labels_to_integers(nx.stochastic_block_model([50] * 4, probs, seed=seed))


def test_leave_one_out_nearest_family():
    graphs = [(name, rows(family_200(name, seed))) for name in ("er", "ba", "ws", "sbm") for seed in range(6)]
    n = len(graphs)
    d = np.full((n, n), np.inf)
    for i in range(n):
        for j in range(i + 1, n):
            d[i, j] = d[j, i] = wasserstein(graphs[i][1], graphs[j][1]).value
    nearest = d.argmin(axis=1)
    accuracy = np.mean([graphs[i][0] == graphs[nearest[i]][0] for i in range(n)])
    assert accuracy >= 0.95, accuracy


# --- the scalable path: a codebook with a bracket ------------------------------------------------------------------


def scalable_vs_exact(a: nx.Graph, b: nx.Graph, k: int) -> tuple[float, float, list[float]]:
    exact = S(a, b, GraphOptions(feature_view="none", replicates=0, codebook=None))
    r = value_graphs(graph_from_networkx(a), [graph_from_networkx(b)],
                     GraphOptions(feature_view="none", replicates=0, codebook=k)).results[0]
    assert r.quantisation_error > 0
    return exact, r.structural_disparity, r.bracket


def test_codebook_within_5_percent_of_exact_at_2000_nodes():
    pairs = [(nx.barabasi_albert_graph(2000, 3, seed=1), nx.gnm_random_graph(2000, 6000, seed=2))]
    for a, b in pairs:
        exact, approx, (lo, hi) = scalable_vs_exact(a, b, 300)
        assert abs(approx - exact) <= 0.05 * exact, (approx, exact)
        assert lo <= exact <= hi


@pytest.mark.slow
def test_codebook_within_5_percent_of_exact_at_5000_nodes():
    a, b = nx.barabasi_albert_graph(5000, 3, seed=1), nx.gnm_random_graph(5000, 15000, seed=2)
    exact, approx, (lo, hi) = scalable_vs_exact(a, b, 500)
    assert abs(approx - exact) <= 0.05 * exact and lo <= exact <= hi


def test_the_bracket_is_a_bound_for_any_codebook():
    """|W₁(quantised) − W₁(exact)| ≤ ε_b + ε_s, checked against ot.emd2 on the raw rows for tiny codebooks."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((300, 3)), rng.standard_normal((250, 3)) + 0.3
    wx, wy = np.full(300, 1 / 300), np.full(250, 1 / 250)
    exact = ot.emd2(wx, wy, ot.dist(x, y, metric="euclidean"))
    for k in (2, 5, 20, 80):
        qx, qy = quantise(x, wx, k), quantise(y, wy, k)
        approx = ot.emd2(qx.weights, qy.weights, ot.dist(qx.rows, qy.rows, metric="euclidean"))
        assert abs(approx - exact) <= qx.error + qy.error + 1e-12
        assert qx.rows.shape[0] <= k and qx.weights.sum() == pytest.approx(1.0)


# --- the interval ---------------------------------------------------------------------------------------------------


def test_interval_is_reported_in_the_result_shape():
    r = value_graphs(graph_from_networkx(karate()), [graph_from_networkx(les_miserables())],
                     GraphOptions(feature_view="none", replicates=40)).as_dict()["sellers"][0]
    lo, hi = r["intervals"]["structural_disparity"]
    assert 0 <= lo < hi and lo <= r["structural_disparity"] * 1.5
    assert r["structural_bracket"] == [r["structural_disparity"]] * 2  # small graphs: rows as they are, exact
    json.dumps(r)


def test_interval_covers_the_population_value():
    """Two fixed populations of 4,000 profile rows (a BA and an SBM graph); buyers and sellers of 200 nodes drawn
    from them 20 times: the 95 % interval covers the population W₁ in at least 17 of 20 draws."""
    pop_b = rows(nx.barabasi_albert_graph(4000, 3, seed=1))
    probs = [[0.02 if i == j else 0.001 for j in range(4)] for i in range(4)]
    pop_s = rows(nx.convert_node_labels_to_integers(nx.stochastic_block_model([1000] * 4, probs, seed=2)))
    bq, sq = quantise(pop_b, None, 300), quantise(pop_s, None, 300)
    truth = wasserstein(bq.rows, sq.rows, bq.weights, sq.weights).value  # within ε of the population W₁
    eps = bq.error + sq.error
    covered = 0
    for draw in range(20):
        rng = np.random.default_rng(draw)
        xb, xs = pop_b[rng.choice(4000, 200)], pop_s[rng.choice(4000, 200)]
        value = wasserstein(xb, xs).value

        def solve(rb, rs, xb=xb, xs=xs):
            kb, ks = rb > 0, rs > 0
            return wasserstein(xb[kb], xs[ks], rb[kb], rs[ks]).value

        lo, hi = bootstrap_interval(solve, np.full(200, 1 / 200), np.full(200, 1 / 200), 200, 200, value,
                                    replicates=40, seed=draw)
        covered += lo - eps <= truth <= hi + eps
    assert covered >= 17, covered


# --- blind = hosted -------------------------------------------------------------------------------------------------


def test_blind_equals_hosted_exactly_through_share_files(tmp_path):
    options = GraphOptions(feature_view="none", replicates=20, codebook=40)  # les_miserables is quantised
    buyer, sellers = graph_from_networkx(les_miserables()), [graph_from_networkx(karate()),
                                                            graph_from_networkx(florentine())]
    hosted = value_graphs(buyer, sellers, options)
    request = graph_request(buyer, [], options)  # the buyer's request: from its own graph, no seller needed
    paths = [tmp_path / "buyer.private.npz"] + [tmp_path / f"seller{i}.npz" for i in range(2)]
    write_graph_share(paths[0], request, graph_share(buyer, request, role="buyer"))
    for p, s in zip(paths[1:], sellers, strict=True):
        write_graph_share(p, request, graph_share(s, request, role="seller"))
    req, b, ss = read_graph_scoring_shares(paths[0], paths[1:])
    blind = graph_score(req, b, ss, options)
    assert blind.request == hosted.request
    for x, y in zip(blind.results, hosted.results, strict=True):
        assert x.structural_disparity == y.structural_disparity > 0
        assert x.interval == y.interval and x.bracket == y.bracket
        assert x.quantisation_error == y.quantisation_error > 0


def test_profile_spec_travels_in_the_request():
    request = graph_request(graph_from_networkx(karate()), [], GraphOptions(profile_rounds=2, triangle_scale=0.25))
    assert request.profile_spec == ProfileSpec(2, 0.25) != ProfileSpec()
    share = graph_share(graph_from_networkx(karate()), request, role="seller").structural
    assert share.embedding.shape[1] == 5  # ln(1 + s), two WWL rounds, triangles, 4-cycles


def test_interval_from_a_coarser_codebook_matches_the_full_bootstrap():
    """Above 300 rows a side the replicates run on 300-row codebooks; the interval's width stays within a factor
    1.5 of the bootstrap on all rows."""
    a, b = nx.barabasi_albert_graph(500, 3, seed=1), nx.gnm_random_graph(500, 1500, seed=2)
    r = value_graphs(graph_from_networkx(a), [graph_from_networkx(b)],
                     GraphOptions(feature_view="none", replicates=40)).results[0]
    xa, xb = rows(a), rows(b)
    assert len(np.unique(xa, axis=0)) > 300 and len(np.unique(xb, axis=0)) > 300

    def solve(ra, rb):
        ka, kb = ra > 0, rb > 0
        return wasserstein(xa[ka], xb[kb], ra[ka], rb[kb]).value

    full = bootstrap_interval(solve, np.full(500, 1 / 500), np.full(500, 1 / 500), 500, 500,
                              r.structural_disparity, replicates=40)
    width, full_width = r.interval[1] - r.interval[0], full[1] - full[0]
    assert full_width / 1.5 <= width <= 1.5 * full_width, (r.interval, full)
