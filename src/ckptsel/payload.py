"""Pair requests as columns: ``a.<feature>`` and ``b.<feature>`` for every feature of the model.

The format shared by the MLflow model (REST ``/invocations``) and the Python API. A request
whose columns differ from the model's schema is refused, naming the missing and extra
columns; a value of the wrong type or an infinity is refused, naming the column.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from ckptsel.errors import CkptselError
from ckptsel.predictor import FeatureSchema
from ckptsel.store import FeatureFrame


def pair_columns(schema: FeatureSchema) -> list[str]:
    return [f"{side}.{f}" for side in ("a", "b") for f in schema.names]


def frames_from_columns(columns: Mapping[str, Sequence], schema: FeatureSchema) -> tuple[FeatureFrame, FeatureFrame]:
    """Split ``{"a.x": [...], "b.x": [...], ...}`` into row-aligned frames for sides A and B."""
    expected = pair_columns(schema)
    missing = [c for c in expected if c not in columns]
    extra = sorted(c for c in columns if c not in set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing columns " + ", ".join(missing))
        if extra:
            parts.append("unexpected columns " + ", ".join(extra))
        raise CkptselError("request does not match the model's feature schema: " + "; ".join(parts)
                           + f" (expected a.<feature>/b.<feature> for {', '.join(schema.names)})")
    lengths = {len(columns[c]) for c in expected}
    if len(lengths) != 1:
        raise CkptselError(f"request columns have different lengths {sorted(lengths)}")
    n = lengths.pop()
    frames = []
    for side in ("a", "b"):
        num = np.empty((n, len(schema.numeric)))
        for j, f in enumerate(schema.numeric):
            num[:, j] = _numeric(columns[f"{side}.{f}"], f"{side}.{f}")
        cat = np.empty((n, len(schema.categorical)), dtype=object)
        for j, c in enumerate(schema.categorical):
            cat[:, j] = [_category(v, f"{side}.{c}") for v in columns[f"{side}.{c}"]]
        frames.append(FeatureFrame([f"{side}{i}" for i in range(n)], list(schema.numeric), num,
                                   list(schema.categorical), cat))
    return frames[0], frames[1]


def _numeric(values: Sequence, column: str) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":  # already floats: NaN is missing
        infinite = np.flatnonzero(np.isinf(values))
        if len(infinite):
            raise CkptselError(f"column {column!r}, row {infinite[0]}: infinite values are not features; "
                               "send null for a missing value")
        return values.astype(np.float64)
    out = np.empty(len(values))
    for i, v in enumerate(values):
        if v is None:
            out[i] = np.nan
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise CkptselError(f"column {column!r}, row {i}: {v!r} is not a number")
        if math.isinf(v):
            raise CkptselError(f"column {column!r}, row {i}: infinite values are not features; "
                               "send null for a missing value")
        out[i] = v
    return out


def _category(v, column: str) -> str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, (str, int, np.integer)) and not isinstance(v, bool):
        return str(v)
    raise CkptselError(f"column {column!r}: {v!r} is not a category name")
