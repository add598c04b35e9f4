"""Build a FeatureFrame by hand in tests."""

from __future__ import annotations

import numpy as np

from ckptsel.store import FeatureFrame


def frame(ids, numeric: dict, categorical: dict | None = None) -> FeatureFrame:
    categorical = categorical or {}
    n = len(ids)
    num = np.array([numeric[k] for k in numeric], dtype=float).T.reshape(n, len(numeric))
    cat = np.empty((n, len(categorical)), dtype=object)
    for j, k in enumerate(categorical):
        cat[:, j] = categorical[k]
    return FeatureFrame(list(ids), list(numeric), num, list(categorical), cat)
