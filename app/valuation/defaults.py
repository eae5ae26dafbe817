"""The valuation library's defaults, in one place that imports nothing (no torch): the library's functions and
the methods catalogue (``app.methods``, whose parameter models the API validates with) both read them here."""

from __future__ import annotations

#: relevance-diversity: keep principal components with eigenvalue above this (absolute, on standardised data)
THRESHOLD = 1e-2
#: relevance-diversity: the single score α·D + (1−α)·R used for ranking
ALPHA = 0.5
#: relevance-diversity intervals: bootstrap replicates per party (0: no intervals), over this many groups of rows,
#: at this confidence; sellers ranked by the lower end of the score's interval ("lower-bound") or by the point
#: score ("point")
REPLICATES = 400
REPLICATE_GROUPS = 64
CONFIDENCE = 0.95
RANKING = "lower-bound"
#: structural disparity: the embedding each party computes ("profile": the deterministic public node profile;
#: "proxy": the seeded proxy graph and signal with a matcher), the rows a party sends at most (above it, k-means
#: centroids with an error bound), and the bootstrap replicates of the interval on S (0: none)
STRUCTURAL_EMBEDDING = "profile"
CODEBOOK = 2000
STRUCTURAL_REPLICATES = 50
#: structural disparity: rounds of blind message passing (WWL update)
MESSAGE_ROUNDS = 3
#: structural disparity: the default matcher of party nodes to proxy nodes
MATCHER = "signature"
#: Shapley with ``--model wwl``: rounds of the WWL update over node features before pooling
WWL_ROUNDS = 2
#: Shapley with ``--model sgc``: K of the SGC features Â^K X
SGC_HOPS = 2
#: KNN utility and KNN-Shapley: neighbours K
KNN_K = 5
#: Monte Carlo Shapley: the permutation (or, for Banzhaf, sample) budget
PERMUTATIONS = 1000
#: Monte Carlo convergence: stop when the mean relative change of the values over the last CONVERGENCE_WINDOW
#: permutations (for Banzhaf, that many permutations' worth of coalitions) is below this
RELATIVE_CHANGE = 0.05
CONVERGENCE_WINDOW = 100
#: Shapley utilities: a coalition with no point, or whose points all carry one class, scores as the majority class
#: of the validation labels (Data Shapley's rule)
MISSING_CLASSES = "majority"
#: TMC: relative truncation tolerance (0 disables truncation), and how many prefixes in a row past the first
#: within tolerance a permutation waits before it is truncated (0: at the first, pyDVL's rule)
TRUNCATION = 0.01
PATIENCE = 5
#: Monte Carlo Shapley: permutations (or subsets) per batch (a batch is one seeded, mergeable unit of work)
BATCH_SIZE = 64
#: Beta Shapley's (α, β): the paper's default up-weights small coalitions
BETA_ALPHA = 16.0
BETA_BETA = 1.0
#: seller-level Shapley: exact over all coalitions up to this many sellers, permutation Monte Carlo beyond
EXACT_MAX_SELLERS = 12
