r"""The ``graph`` and ``structural-disparity`` methods: S plus relevance/diversity of node features.

Two embeddings (``GraphOptions.embedding``): ``profile``, the default — each party computes the deterministic
public node profile of :mod:`.profile` on its own graph and sends the rows sorted and merged, or above the
request's ``codebook`` size k-means centroids with the error bound ε (:mod:`.trust`); nothing in the request
depends on the job's graphs — and ``proxy``, the seeded proxy graph with a matcher described below. With either,
the broker adds to S a bootstrap interval over nodes and the bracket S ± (ε_b + ε_s).

Split into the three parties' steps, so blind mode (files between parties) and hosted mode
(:func:`value_graphs`) run the same code and give identical numbers:

1. **Broker** — :func:`graph_request` (from listing metadata only: node counts, the buyer's mean degree) fixes
   a public :class:`GraphRequest`: the proxy spec, the matcher, H, the optional subsample size, the feature view
   and a request id.
2. **Each party** — :func:`graph_share` cleans its graph (reporting every change), builds the proxy from the
   spec, matches and embeds each graph locally, and adds the featural part through the existing
   relevance-diversity code (:func:`~app.valuation.featural.buyer_share` / ``seller_share``):

   - buyer → broker: its :class:`StructuralShare` (embedding E_b and node weights) and its ``BuyerPrivate`` (the
     kept eigenvalues λ, which request directions are real);
   - buyer → sellers: its ``FeatureRequest`` (principal directions U, possibly with decoys) — public;
   - seller → broker: its :class:`StructuralShare` (E_s, weights) and its ``SellerShare`` (λ̂, one per direction).

   A structural share holds: ``embedding`` (r × m(H+1) float64: the rows of E, each graph's rows in its
   canonical order, graphs in file order; with ``subsample`` set, a seeded sample of r rows), ``weights`` (r,
   summing to 1: 1/n for one graph, 1/(G·n_g) for a node of graph g of a collection; after a subsample the
   rows are drawn ∝ these weights and weigh 1/r each), ``num_nodes``, ``num_graphs``, the matching summary
   and the clean-up report. No node id, feature or edge leaves the party (E is structure passed through the
   public proxy signal).
3. **Broker** — :func:`graph_score`: one Wasserstein solver for all sellers of the job
   (:func:`~app.valuation.structural.wasserstein.choose_solver`), S = W₁(E_b, E_s), structural_similarity =
   exp(−S/s₀) with s₀ from the buyer's embedding, and R, D from (λ, λ̂) with ``broker_score``.

Featural view: ``raw`` — relevance/diversity of the node features pooled over all nodes (all graphs of a
collection); ``propagated`` — of ÂX per graph, Â = D^{-1/2}(A + I)D^{-1/2} with the cleaned (weighted) adjacency
and unit self-loops; ``none`` — structure only (the ``structural-disparity`` method). A featureless graph gets
no R, D (with a note).

Optional single score (only when asked; the paper does not combine the three): with weights
(w_sim, w_div, w_rel) ≥ 0, normalised to sum 1,
score = w_sim·structural_similarity + w_div·D + w_rel·R. It is ``None`` when a term with positive weight is
unavailable (featureless data).

Matcher default: ``signature`` (see ``matching.py``). The issue's bijective matchers (``auto`` = ``faq`` up to
``faq_max_nodes``, else ``rank``) are available by name; with an i.i.d. proxy signal they make S close to an
isomorphism test (0 for isomorphic graphs, a size-dependent plateau for anything else), so S does not grow with
structural change; the log-degree-class ``signature`` matcher does.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from app.data.errors import ShareMismatch
from app.data.graph import GraphData
from app.valuation.errors import ValuationError
from app.valuation.featural import (
    DEFAULT_THRESHOLD,
    BuyerPrivate,
    FeatureRequest,
    RelevanceDiversity,
    Scaling,
    SellerShare,
    ThresholdMode,
    broker_score,
    buyer_share,
    seller_share,
)
from app.valuation.structural.graph_model import CleanGraph, clean_graph
from app.valuation.structural.matching import (
    DEFAULT_MATCHER,
    FAQ_MAX_NODES,
    FAQ_RESTARTS,
    SIGNATURE_BASE,
    Adjacency,
    MatchTarget,
    Method,
)
from app.valuation.structural.message_passing import DEFAULT_ROUNDS, embed
from app.valuation.structural.profile import PROFILE_ROUNDS, SQUARE_SCALE, TRIANGLE_SCALE, ProfileSpec, profile
from app.valuation.structural.proxy import (
    DEFAULT_SIGNAL_DIM,
    Generator,
    GraphStats,
    ProxySpec,
    graph_stats,
    make_proxy,
)
from app.valuation.structural.trust import (
    CODEBOOK,
    CONFIDENCE,
    INTERVAL_ROWS,
    REPLICATES,
    bootstrap_interval,
    bracket,
    quantise,
)
from app.valuation.structural.wasserstein import (
    EXACT_MAX_PAIRS,
    N_PROJECTIONS,
    S0_MAX_NODES,
    SINKHORN_MAX_PAIRS,
    SINKHORN_REG,
    Solver,
    SolverChoice,
    WassersteinOptions,
    choose_solver,
    median_distance,
    sample_cloud,
    sorted_cloud,
    structural_similarity,
    wasserstein,
)

FeatureView = Literal["raw", "propagated", "none"]
FEATURE_VIEWS = ("raw", "propagated", "none")
# ``profile``: the deterministic public node profile (profile.py), the default; ``proxy``: the seeded proxy graph
# and signal with a matcher (proxy.py, matching.py, message_passing.py), kept as an option.
Embedding = Literal["profile", "proxy"]
EMBEDDINGS = ("profile", "proxy")


@dataclass(frozen=True)
class GraphOptions:
    """Every choice of a graph valuation; :meth:`as_dict` goes into the result so a number can be reproduced."""

    embedding: Embedding = "profile"
    # profile embedding (parties)
    profile_rounds: int = PROFILE_ROUNDS
    triangle_scale: float = TRIANGLE_SCALE
    square_scale: float = SQUARE_SCALE
    codebook: int | None = CODEBOOK  # a party with more rows sends this many k-means centroids (and its ε)
    # interval on S (broker): bootstrap replicates (0: none) and confidence
    replicates: int = REPLICATES
    confidence: float = CONFIDENCE
    # proxy (broker)
    generator: Generator = "erdos_renyi"
    signal_dim: int = DEFAULT_SIGNAL_DIM
    proxy_nodes: int | None = None  # default: the largest graph of the buyer and every seller
    # matching and message passing (parties)
    matcher: Method = DEFAULT_MATCHER
    faq_max_nodes: int = FAQ_MAX_NODES
    faq_restarts: int = FAQ_RESTARTS
    signature_base: float = SIGNATURE_BASE
    rounds: int = DEFAULT_ROUNDS
    subsample: int | None = None  # rows of E each party sends at most (seeded sample); None: all
    # optimal transport (broker)
    solver: Solver = "auto"
    exact_max_pairs: int = EXACT_MAX_PAIRS
    approx: Literal["sliced", "sinkhorn"] = "sliced"
    n_projections: int = N_PROJECTIONS
    sinkhorn_reg: float = SINKHORN_REG
    sinkhorn_max_pairs: int = SINKHORN_MAX_PAIRS
    s0_max_nodes: int = S0_MAX_NODES
    # node features (relevance and diversity)
    feature_view: FeatureView = "raw"
    scaling: Scaling = "own"
    threshold: float = DEFAULT_THRESHOLD
    threshold_mode: ThresholdMode = "absolute"
    feature_weights: str | list[float] | None = None
    decoys: int = 0
    # optional single score: (similarity, diversity, relevance) weights
    score_weights: tuple[float, float, float] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.embedding not in EMBEDDINGS:
            raise ValuationError(f"unknown structural embedding {self.embedding!r}; use profile or proxy")
        if self.codebook is not None and self.codebook < 2:
            raise ValuationError("the codebook needs at least 2 rows")
        if self.replicates < 0 or not 0.5 < self.confidence < 1:
            raise ValuationError("replicates must be >= 0 and the confidence between 0.5 and 1")
        ProfileSpec(self.profile_rounds, self.triangle_scale, self.square_scale)  # checks them
        if self.feature_view not in FEATURE_VIEWS:
            raise ValuationError(f"unknown feature view {self.feature_view!r}; use raw, propagated or none")
        if self.subsample is not None and self.subsample < 2:
            raise ValuationError("subsample must be at least 2 rows")
        if self.score_weights is not None:
            w = self.score_weights
            if len(w) != 3 or any(x < 0 or not math.isfinite(x) for x in w) or sum(w) <= 0:
                raise ValuationError("score weights are three numbers >= 0 (similarity, diversity, relevance)")

    def transport(self) -> WassersteinOptions:
        return WassersteinOptions(
            solver=self.solver, exact_max_pairs=self.exact_max_pairs, approx=self.approx,
            n_projections=self.n_projections, sinkhorn_reg=self.sinkhorn_reg,
            sinkhorn_max_pairs=self.sinkhorn_max_pairs, s0_max_nodes=self.s0_max_nodes, seed=self.seed,
        )

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["score_weights"] = list(self.score_weights) if self.score_weights is not None else None
        return d


@dataclass(frozen=True)
class GraphRequest:
    """Public: what the broker tells every party of a job. Both parties must embed with exactly this."""

    spec: ProxySpec
    matcher: str
    rounds: int
    faq_max_nodes: int
    faq_restarts: int
    signature_base: float
    subsample: int | None
    feature_view: FeatureView
    seed: int
    embedding: Embedding = "profile"
    profile: dict[str, Any] = field(default_factory=lambda: ProfileSpec().as_dict())
    codebook: int | None = CODEBOOK
    request_id: str = ""

    def body(self) -> dict[str, Any]:
        return {
            "spec": self.spec.as_dict(), "matcher": self.matcher, "rounds": self.rounds,
            "faq_max_nodes": self.faq_max_nodes, "faq_restarts": self.faq_restarts,
            "signature_base": self.signature_base, "subsample": self.subsample,
            "feature_view": self.feature_view, "seed": self.seed,
            "embedding": self.embedding, "profile": dict(self.profile), "codebook": self.codebook,
        }

    @property
    def profile_spec(self) -> ProfileSpec:
        return ProfileSpec.from_dict(self.profile)

    def as_dict(self) -> dict[str, Any]:
        return {**self.body(), "request_id": self.request_id}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphRequest:
        body = {k: v for k, v in d.items() if k not in ("spec", "request_id")}
        req = cls(spec=ProxySpec.from_dict(d["spec"]), **body)
        expected = _request_id(req)
        if d.get("request_id") not in (None, "", expected):
            raise ShareMismatch(None, "the graph request's id does not match its contents (edited or corrupt)")
        return _with_id(req)


def _request_id(req: GraphRequest) -> str:
    text = json.dumps(req.body(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _with_id(req: GraphRequest) -> GraphRequest:
    return GraphRequest(**{**req.__dict__, "request_id": _request_id(req)})


def graph_request(
    buyer: GraphStats | GraphData | CleanGraph,
    sellers: Sequence[GraphStats | GraphData | CleanGraph],
    options: GraphOptions = GraphOptions(),
) -> GraphRequest:
    """Broker's first step, from listing metadata: the embedding settings, and for ``embedding="proxy"`` the
    proxy spec (METHODS defaults: sized to the job's largest graph, the buyer's mean degree). With the default
    ``profile`` embedding nothing in the request depends on the job's graphs: the proxy spec is a fixed
    placeholder the parties do not use."""
    if options.embedding == "profile":
        spec = ProxySpec()
    else:
        b = graph_stats(buyer)
        stats = [b, *(graph_stats(s) for s in sellers)]
        n_p = options.proxy_nodes or max(s.max_graph_nodes for s in stats)
        spec = ProxySpec(
            generator=options.generator, n_nodes=int(n_p), mean_degree=float(b.mean_degree),
            signal_dim=options.signal_dim, seed=options.seed,
        )
    req = GraphRequest(
        spec=spec, matcher=options.matcher, rounds=options.rounds, faq_max_nodes=options.faq_max_nodes,
        faq_restarts=options.faq_restarts, signature_base=options.signature_base, subsample=options.subsample,
        feature_view=options.feature_view, seed=options.seed, embedding=options.embedding,
        profile=ProfileSpec(options.profile_rounds, options.triangle_scale, options.square_scale).as_dict(),
        codebook=options.codebook if options.embedding == "profile" else None,
    )
    return _with_id(req)


# --- party side ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StructuralShare:
    """A party's structural share (to the broker): its embedding rows and their weights, nothing else."""

    request_id: str
    embedding: torch.Tensor  # (r, m(H+1)) float64, CPU
    weights: torch.Tensor  # (r,) float64, sums to 1
    num_nodes: int
    num_graphs: int
    subsampled: bool = False
    quantised: bool = False  # the rows are codebook centroids
    quantisation_error: float = 0.0  # ε = Σ_i w_i ‖x_i − c(x_i)‖ over the party's own rows (0: rows as they are)
    matching: dict[str, Any] = field(default_factory=dict, compare=False)
    cleanup: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def rows(self) -> int:
        return int(self.embedding.shape[0])

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Plain arrays and JSON metadata for a share file (no pickle)."""
        arrays = {"embedding": self.embedding.numpy(), "weights": self.weights.numpy()}
        meta = {
            "request_id": self.request_id, "num_nodes": self.num_nodes, "num_graphs": self.num_graphs,
            "subsampled": self.subsampled, "quantised": self.quantised, "quantisation_error": self.quantisation_error,
            "matching": self.matching, "cleanup": self.cleanup,
        }
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> StructuralShare:
        e = np.asarray(arrays["embedding"], dtype=np.float64)
        w = np.asarray(arrays["weights"], dtype=np.float64)
        if e.ndim != 2 or w.shape != (e.shape[0],) or not np.isfinite(e).all() or (w < 0).any():
            raise ShareMismatch(None, "a structural share needs an (r, k) embedding and r non-negative weights")
        if not abs(float(w.sum()) - 1.0) <= 1e-9:
            raise ShareMismatch(None, f"a structural share's weights must sum to 1 (they sum to {w.sum()!r})")
        return cls(
            request_id=str(meta["request_id"]), embedding=torch.from_numpy(e), weights=torch.from_numpy(w),
            num_nodes=int(meta["num_nodes"]), num_graphs=int(meta["num_graphs"]),
            subsampled=bool(meta.get("subsampled", False)), quantised=bool(meta.get("quantised", False)),
            quantisation_error=_error(meta.get("quantisation_error", 0.0)), matching=dict(meta.get("matching", {})),
            cleanup=dict(meta.get("cleanup", {})),
        )


def _error(value: Any) -> float:
    e = float(value)
    if not (math.isfinite(e) and e >= 0):
        raise ShareMismatch(None, f"a structural share's quantisation error must be a number >= 0, not {value!r}")
    return e


@dataclass(frozen=True)
class GraphShare:
    """Everything a party's step produces, labelled by recipient."""

    role: Literal["buyer", "seller"]
    structural: StructuralShare  # → broker
    feature_request: FeatureRequest | None = None  # buyer → sellers (public)
    feature_private: BuyerPrivate | None = None  # buyer → broker (λ)
    feature_share: SellerShare | None = None  # seller → broker (λ̂)
    notes: list[str] = field(default_factory=list)


def structural_share(
    graph: GraphData | CleanGraph,
    request: GraphRequest,
    *,
    target: MatchTarget | None = None,
    device: torch.device | str = "cpu",
) -> StructuralShare:
    """Embed every graph of ``graph`` (the public profile, or against the request's proxy) and pool the rows with
    per-graph weights; above the request's codebook size, send centroids and the error bound instead."""
    g = clean_graph(graph)
    if request.embedding == "profile":
        return _profile_share(g, request)
    target = target or MatchTarget.of(make_proxy(request.spec))
    if target.proxy.signal.shape[1] != request.spec.signal_dim or target.n != request.spec.n_nodes:
        raise ValuationError("the proxy given does not match the request's spec")
    parts, weights, summaries = [], [], []
    n_graphs = g.num_graphs
    for data in g.graphs:
        emb = embed(
            Adjacency.of(data), target, rounds=request.rounds, method=request.matcher,  # type: ignore[arg-type]
            faq_max_nodes=request.faq_max_nodes, restarts=request.faq_restarts, seed=request.seed,
            base=request.signature_base, device=device,
        )
        parts.append(emb.E.detach().cpu())
        n = int(data.num_nodes)
        weights.append(torch.full((n,), 1.0 / (n_graphs * n), dtype=torch.float64))
        summaries.append(emb.matching)
    E = torch.cat(parts, dim=0)
    w = torch.cat(weights)
    subsampled = False
    if request.subsample is not None and E.shape[0] > request.subsample:
        E, w = _subsample_rows(E, w, request.subsample, request.seed)
        subsampled = True
    return StructuralShare(
        request_id=request.request_id, embedding=E, weights=w / w.sum(), num_nodes=g.num_nodes,
        num_graphs=n_graphs, subsampled=subsampled, matching=_matching_summary(summaries),
        cleanup=g.report.as_dict(),
    )


def _profile_share(g: CleanGraph, request: GraphRequest) -> StructuralShare:
    spec = request.profile_spec
    parts = [profile(Adjacency.of(data), spec) for data in g.graphs]
    weights = [torch.full((int(d.num_nodes),), 1.0 / (g.num_graphs * int(d.num_nodes)), dtype=torch.float64)
               for d in g.graphs]
    E, w = torch.cat(parts, dim=0), torch.cat(weights)
    subsampled = False
    if request.subsample is not None and E.shape[0] > request.subsample:
        E, w = _subsample_rows(E, w, request.subsample, request.seed)
        subsampled = True
    # Rows leave sorted and merged (equal profiles summed): no node order, no duplicate rows; beyond the codebook
    # size, k-means centroids with the bound ε.
    book = quantise(E.numpy(), w.numpy(), request.codebook)
    return StructuralShare(
        request_id=request.request_id, embedding=torch.from_numpy(book.rows), weights=torch.from_numpy(book.weights),
        num_nodes=g.num_nodes, num_graphs=g.num_graphs, subsampled=subsampled, quantised=book.quantised,
        quantisation_error=book.error,
        matching={"embedding": "profile", "profile": spec.as_dict(), "graphs": g.num_graphs,
                  "rows_sent": int(book.rows.shape[0]), "codebook": book.quantised},
        cleanup=g.report.as_dict(),
    )


def _subsample_rows(E: torch.Tensor, w: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded sample of k rows (∝ node weight, without replacement, then equal weights), drawn from the rows
    in sorted order so that it does not depend on node order."""
    x, wt = sorted_cloud(E, w, merge=False)
    x, wt = sample_cloud(x, wt, k, np.random.default_rng(np.random.SeedSequence([seed, 0x5B])))
    return torch.from_numpy(x), torch.from_numpy(wt)


def _matching_summary(ms: list[Any]) -> dict[str, Any]:
    methods = sorted({m.method for m in ms})
    return {
        "methods": methods,
        "graphs": len(ms),
        "objective": float(sum(m.objective for m in ms)),
        "proxy_reuse": int(sum(m.proxy_reuse for m in ms)),
        "individualisations": int(sum(m.canonical.individualisations for m in ms)),
        "wl_rounds": int(sum(m.canonical.rounds for m in ms)),
        "canonical_complete": all(m.canonical.complete for m in ms),
    }


def node_features(graph: CleanGraph, view: FeatureView) -> torch.Tensor | None:
    """The rows the featural part uses: X (``raw``) or ÂX per graph (``propagated``); ``None`` if featureless."""
    if view == "none" or graph.featureless:
        return None
    if view == "raw":
        return graph.features()
    out = []
    for data in graph.graphs:
        adj = Adjacency.of(data)
        n = adj.n
        w = np.ones(adj.indices.shape[0]) if adj.weights is None else adj.weights
        deg = np.bincount(adj.rows, weights=w, minlength=n) + 1.0  # A + I
        inv = 1.0 / np.sqrt(deg)
        vals = inv[adj.rows] * w * inv[adj.indices]
        op = torch.sparse_coo_tensor(
            torch.from_numpy(np.stack([adj.rows, adj.indices])), torch.from_numpy(vals), (n, n), check_invariants=False
        ).coalesce()
        x = data.x.to(torch.float64)
        out.append(torch.sparse.mm(op, x) + torch.from_numpy(inv * inv).unsqueeze(1) * x)
    return torch.cat(out, dim=0)


def _blocks(x: torch.Tensor) -> Callable[[], Any]:
    return lambda: iter([x])


def graph_share(
    graph: GraphData | CleanGraph,
    request: GraphRequest,
    *,
    role: Literal["buyer", "seller"],
    feature_request: FeatureRequest | None = None,
    scaling: Scaling = "own",
    threshold: float = DEFAULT_THRESHOLD,
    threshold_mode: ThresholdMode = "absolute",
    decoys: int = 0,
    target: MatchTarget | None = None,
    device: torch.device | str = "cpu",
) -> GraphShare:
    """A party's whole step: structural share plus the featural share (buyer: U and λ; seller: λ̂ along the
    buyer's ``feature_request``)."""
    if role not in ("buyer", "seller"):
        raise ValuationError(f"role must be buyer or seller, not {role!r}")
    g = clean_graph(graph)
    structural = structural_share(g, request, target=target, device=device)
    notes = list(g.notes)
    x = node_features(g, request.feature_view)
    if request.feature_view != "none" and x is None:
        notes.append("featureless graph: no relevance or diversity")
    if role == "buyer":
        if x is None:
            return GraphShare("buyer", structural, notes=notes)
        freq, private = buyer_share(
            _blocks(x), scaling=scaling, threshold=threshold, threshold_mode=threshold_mode, decoys=decoys,
            seed=request.seed, device=device,
        )
        return GraphShare("buyer", structural, feature_request=freq, feature_private=private, notes=notes)
    if x is None or feature_request is None:
        if x is not None and request.feature_view != "none":
            notes.append("the buyer sent no feature request: no relevance or diversity")
        return GraphShare("seller", structural, notes=notes)
    if x.shape[1] != feature_request.n_features:
        raise ValuationError(
            f"the seller's nodes have {x.shape[1]} features, the buyer's {feature_request.n_features}"
        )
    share = seller_share(_blocks(x), feature_request, device=device)
    return GraphShare("seller", structural, feature_share=share, notes=notes)


# --- broker side ---------------------------------------------------------------------------------------------


@dataclass
class GraphResult:
    structural_disparity: float
    structural_similarity: float
    relevance: float | None
    diversity: float | None
    components: int | None
    score: float | None
    rows: int
    num_nodes: int
    num_graphs: int
    details: dict[str, Any] = field(default_factory=dict)
    matching: dict[str, Any] = field(default_factory=dict)
    cleanup: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # [lo, hi] bootstrap interval of S (None: no replicates); [S − ε, S + ε] around a codebook value
    interval: list[float] | None = None
    bracket: list[float] | None = None
    quantisation_error: float = 0.0  # ε_buyer + ε_seller

    def as_dict(self) -> dict[str, Any]:
        return {
            "structural_disparity": self.structural_disparity,
            "intervals": None if self.interval is None else {"structural_disparity": self.interval},
            "structural_bracket": self.bracket,
            "quantisation_error": self.quantisation_error,
            "structural_similarity": self.structural_similarity,
            "relevance": self.relevance,
            "diversity": self.diversity,
            "components": self.components,
            "score": self.score,
            "rows": self.rows,
            "nodes": self.num_nodes,
            "graphs": self.num_graphs,
            "transport": self.details,
            "matching": self.matching,
            "cleanup": self.cleanup,
            "notes": self.notes,
        }


@dataclass
class GraphValuation:
    request: GraphRequest
    solver: SolverChoice
    s0: float
    results: list[GraphResult]
    buyer: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "request": self.request.as_dict(),
            "solver": self.solver.as_dict(),
            "s0": self.s0,
            "buyer": self.buyer,
            "options": self.options,
            "sellers": [r.as_dict() for r in self.results],
        }


def _check(share: StructuralShare, request: GraphRequest, who: str) -> None:
    if share.request_id != request.request_id:
        raise ShareMismatch(
            None, f"the {who}'s structural share answers request {share.request_id}, not {request.request_id}"
        )


def graph_score(
    request: GraphRequest,
    buyer: GraphShare,
    sellers: Sequence[GraphShare],
    options: GraphOptions = GraphOptions(),
    *,
    device: torch.device | str = "cpu",
    progress: Callable[[GraphProgress], None] | None = None,
) -> GraphValuation:
    """Broker's step for a whole job: one solver for every seller, S, similarity, and R, D per seller.

    ``progress``, if given, is called after each seller is scored (stage ``score``, ``done`` of ``len(sellers)``).
    """
    _check(buyer.structural, request, "buyer")
    for s in sellers:
        _check(s.structural, request, "seller")
    transport = options.transport()
    eb, wb = buyer.structural.embedding, buyer.structural.weights
    solver = choose_solver([(eb.shape[0], s.structural.rows) for s in sellers], transport)
    s0 = median_distance(eb, wb, max_nodes=transport.s0_max_nodes, seed=transport.seed)
    results = []
    for i, s in enumerate(sellers, 1):
        d = wasserstein(eb, s.structural.embedding, wb, s.structural.weights, solver=solver, device=device)
        sim = structural_similarity(d.value, s0)
        error = buyer.structural.quantisation_error + s.structural.quantisation_error
        interval = _interval(buyer.structural, s.structural, d.value, error, solver, options, device)
        rd: RelevanceDiversity | None = None
        notes = list(s.notes)
        small = small_graph_note(buyer.structural.num_nodes, s.structural.num_nodes)
        if small:
            notes.append(small)
        if error > 0:
            notes.append(f"S is computed from codebooks (at most {request.codebook} rows a party); the exact value "
                         f"lies within ±{error:.3g} (structural_bracket)")
        if buyer.feature_private is not None and s.feature_share is not None:
            rd = broker_score(buyer.feature_private, s.feature_share, weights=options.feature_weights)
        elif request.feature_view != "none" and buyer.feature_private is None:
            notes.append("the buyer's graph is featureless: no relevance or diversity")
        score = _score(options.score_weights, sim, rd)
        results.append(GraphResult(
            structural_disparity=d.value, structural_similarity=sim,
            relevance=None if rd is None else rd.relevance, diversity=None if rd is None else rd.diversity,
            components=None if rd is None else rd.components, score=score, rows=s.structural.rows,
            num_nodes=s.structural.num_nodes, num_graphs=s.structural.num_graphs, details=d.details,
            matching=s.structural.matching, cleanup=s.structural.cleanup, notes=notes, interval=interval,
            bracket=bracket(d.value, error) if solver.name == "exact" else None, quantisation_error=error,
        ))
        if progress is not None:
            progress(GraphProgress("score", i, len(sellers), f"seller {i} of {len(sellers)}"))
    buyer_info = {
        "rows": buyer.structural.rows, "nodes": buyer.structural.num_nodes, "graphs": buyer.structural.num_graphs,
        "matching": buyer.structural.matching, "cleanup": buyer.structural.cleanup, "notes": buyer.notes,
        "components": None if buyer.feature_private is None else buyer.feature_private.components,
    }
    return GraphValuation(request, solver, s0, results, buyer_info, options.as_dict())


# Below this many nodes, one graph's own randomness moves S about as much as rewiring a tenth of its edges does
# (docs/structural-disparity.md: under random rewiring, S of karate, Davis' southern women and a 200-node SBM
# orders 70-100 % rewired graphs poorly; 8 copies of karate or Davis, 256-272 nodes, and a 400-node SBM do not).
SMALL_GRAPH_NODES = 250


def small_graph_note(buyer_nodes: int, seller_nodes: int) -> str | None:
    """The note a result carries when either graph has fewer than SMALL_GRAPH_NODES nodes (None otherwise)."""
    small = [f"{who} {n:,} nodes" for who, n in (("buyer", buyer_nodes), ("seller", seller_nodes))
             if n < SMALL_GRAPH_NODES]
    if not small:
        return None
    return (f"small graph ({', '.join(small)}): under {SMALL_GRAPH_NODES} nodes S tells large structural differences "
            "apart, not close ones; sellers whose S intervals overlap are about equally distant")


def _interval(
    b: StructuralShare, s: StructuralShare, value: float, error: float, solver: SolverChoice, options: GraphOptions,
    device: torch.device | str,
) -> list[float] | None:
    """The bootstrap interval of S over both sides' nodes (trust.py), with the job's solver; replicates on at most
    ``INTERVAL_ROWS`` rows a side."""
    if options.replicates <= 0:
        return None
    eb, wb = _coarse(b)
    es, ws = _coarse(s)

    def solve(rb: np.ndarray, rs: np.ndarray) -> float:
        kb, ks = rb > 0, rs > 0  # rows no resampled node landed on
        return wasserstein(eb[kb], es[ks], rb[kb], rs[ks], solver=solver, device=device).value

    centre = None if (eb.shape[0], es.shape[0]) == (b.rows, s.rows) else solve(wb, ws)
    return bootstrap_interval(solve, wb, ws, b.num_nodes, s.num_nodes, value, replicates=options.replicates,
                              confidence=options.confidence, error=error, seed=options.seed, centre=centre)


def _coarse(share: StructuralShare) -> tuple[np.ndarray, np.ndarray]:
    """The rows the replicates are solved on: the share's own, or a k-means codebook of INTERVAL_ROWS of them."""
    book = quantise(share.embedding.numpy(), share.weights.numpy(), INTERVAL_ROWS)
    if not book.quantised:
        return share.embedding.numpy(), share.weights.numpy()
    return book.rows, book.weights


def _score(weights: tuple[float, float, float] | None, sim: float, rd: RelevanceDiversity | None) -> float | None:
    if weights is None:
        return None
    ws, wd, wr = (float(w) for w in weights)
    total = ws + wd + wr
    if rd is None and (wd > 0 or wr > 0):
        return None
    d = 0.0 if rd is None else rd.diversity
    r = 0.0 if rd is None else rd.relevance
    return (ws * sim + wd * d + wr * r) / total


@dataclass(frozen=True)
class GraphProgress:
    """One finished unit of a graph valuation, for a progress display.

    ``stage`` is ``clean``, ``share`` (a party's matching, message passing and featural moments: the long part)
    or ``score`` (one seller's Wasserstein distance); ``done`` of ``total`` counts units of the whole call, so
    ``total`` is known from the first report on; ``label`` names the unit (``buyer``, ``seller 2 of 3``).
    """

    stage: Literal["clean", "share", "score"]
    done: int
    total: int
    label: str

    def __str__(self) -> str:
        return f"{self.stage}: {self.label} ({self.done}/{self.total})"


def value_graphs(
    buyer: GraphData | CleanGraph,
    sellers: Sequence[GraphData | CleanGraph],
    options: GraphOptions = GraphOptions(),
    *,
    device: torch.device | str = "cpu",
    progress: Callable[[GraphProgress], None] | None = None,
) -> GraphValuation:
    """Hosted mode: the broker's, the buyer's and each seller's steps in sequence on one machine.

    ``progress``, if given, is called after each unit of work: each graph cleaned (buyer, then sellers), each
    party's share computed, each seller scored; ``done`` rises by one per call up to ``total`` = 3·sellers + 2.
    It does not change the result.
    """
    if not sellers:
        raise ValuationError("at least one seller graph is needed")
    n = len(sellers)
    labels = ["buyer", *(f"seller {i} of {n}" for i in range(1, n + 1))]
    total = 2 * (n + 1) + n
    done = 0

    def tick(stage: Literal["clean", "share", "score"], label: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(GraphProgress(stage, done, total, label))

    b = clean_graph(buyer)
    tick("clean", labels[0])
    ss = []
    for label, s in zip(labels[1:], sellers, strict=True):
        ss.append(clean_graph(s))
        tick("clean", label)
    request = graph_request(b, ss, options)
    target = MatchTarget.of(make_proxy(request.spec)) if request.embedding == "proxy" else None
    kw = dict(scaling=options.scaling, threshold=options.threshold, threshold_mode=options.threshold_mode,
              decoys=options.decoys, target=target, device=device)
    bshare = graph_share(b, request, role="buyer", **kw)
    tick("share", labels[0])
    sshares = []
    for label, s in zip(labels[1:], ss, strict=True):
        sshares.append(graph_share(s, request, role="seller", feature_request=bshare.feature_request, **kw))
        tick("share", label)
    on_score = None if progress is None else (lambda p: tick("score", p.label))
    return graph_score(request, bshare, sshares, options, device=device, progress=on_score)
