"""Write an example buyer and three sellers from scikit-learn's breast-cancer data (569 rows, 30 features).

    python examples/make_breast_cancer.py [OUT_DIR]     # default: examples/data

- buyer.csv            a random half of the data (both classes, as in the full set)
- seller_like.csv      the other half: drawn like the buyer
- seller_malignant.csv only the malignant tumours: a different class mix
- seller_noise.csv     pure Gaussian noise under the same column names

Each file has the 30 feature columns and a `label` column (left out of relevance-diversity automatically).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer


def main(out: Path) -> None:
    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns={"target": "label"})
    rng = np.random.default_rng(0)
    order = rng.permutation(len(frame))
    half = len(frame) // 2
    buyer, like = frame.iloc[order[:half]], frame.iloc[order[half:]]
    malignant = frame[frame["label"] == 0]
    noise = pd.DataFrame(rng.normal(size=(half, len(data.feature_names))), columns=data.feature_names)
    noise["label"] = rng.integers(0, 2, size=half)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in [("buyer", buyer), ("seller_like", like), ("seller_malignant", malignant),
                       ("seller_noise", noise)]:
        part.to_csv(out / f"{name}.csv", index=False)
    print(f"wrote buyer.csv, seller_like.csv, seller_malignant.csv, seller_noise.csv to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "data")
