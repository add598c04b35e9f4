"""Import a table of checkpoints (CSV or Parquet) into the store.

One row per checkpoint. The id column names the checkpoint; label columns become labels
(fine-tuning outcomes); every other column becomes a feature: numeric when all its
non-missing cells are numbers, categorical metadata when they are strings. A column that
is mostly numbers with a stray string is an error, not a silent categorical.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ckptsel.errors import CkptselError
from ckptsel.store import Checkpoint, Store

IMPORT_SPEC = "import-table"


@dataclass
class ImportSummary:
    file: str
    checkpoints: int
    numeric: list[str]
    categorical: list[str]
    labels: list[str]
    missing: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        lines = [
            f"imported {self.checkpoints} checkpoints from {self.file}: "
            f"{len(self.numeric)} numeric features, {len(self.categorical)} categorical, "
            f"{len(self.labels)} labels ({', '.join(self.labels)})"
        ]
        if self.missing:
            lines.append("missing values: " + ", ".join(f"{c} ({n})" for c, n in self.missing.items()))
        return "\n".join(lines)


def table_fingerprint(checkpoint_id: str) -> str:
    """Fingerprint of a checkpoint known only from a table (no weights to hash)."""
    return "table:" + hashlib.sha256(checkpoint_id.encode()).hexdigest()[:16]


def read_table(path: str | Path):
    """Read CSV or Parquet as a DataFrame of strings (None for missing), to validate cell by cell."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise CkptselError(f"{path}: no such file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(path)
            df = df.astype(object).where(df.notna(), None)
            df = df.map(lambda v: None if v is None else str(v))
            df = df.astype(object).where(df.notna(), None)  # pandas 3: map() infers str dtype, None -> NaN
        else:
            df = pd.read_csv(path, dtype=str, keep_default_na=True, skipinitialspace=True)
            df = df.astype(object).where(df.notna(), None)
    except CkptselError:
        raise
    except Exception as e:  # pandas raises many types for unreadable files
        raise CkptselError(f"{path}: cannot read as a table ({type(e).__name__}: {e})") from e
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _row(path: Path, i: int) -> str:
    """Human row reference: 1-based data row, plus the line number in a CSV (header is line 1)."""
    return f"row {i + 1} (line {i + 2})" if path.suffix.lower() == ".csv" else f"row {i + 1}"


def _parse_float(cell: str | None) -> float | None:
    if cell is None or cell.strip() == "":
        return None
    return float(cell)  # raises ValueError on a non-number


def _classify(values: list[str | None]) -> tuple[str, int | None]:
    """'numeric' / 'categorical', and for numeric-looking columns the first bad row."""
    present = [(i, v) for i, v in enumerate(values) if v is not None and v.strip() != ""]
    bad = []
    for i, v in present:
        try:
            float(v)
        except ValueError:
            bad.append(i)
    if not bad:
        return "numeric", None
    if len(bad) * 2 < len(present):  # mostly numbers: the strings are stray
        return "numeric", bad[0]
    return "categorical", None


def import_table(store: Store, path: str | Path, *, id_column: str, labels: Sequence[str],
                 run_column: str | None = None, step_column: str | None = None,
                 ignore: Sequence[str] = ()) -> ImportSummary:
    """Validate the whole table first, then write it in one transaction (all or nothing)."""
    path = Path(path)
    df = read_table(path)
    columns = list(df.columns)
    if len(df) == 0:
        raise CkptselError(f"{path}: the table is empty (a header and no rows); nothing imported")

    def need(col: str | None, role: str, flag: str) -> None:
        if col is not None and col not in columns:
            raise CkptselError(f"{path}: {role} column {col!r} not found; columns are "
                               f"{', '.join(map(repr, columns))} (pass {flag})")

    need(id_column, "id", "--id-column")
    for label in labels:
        need(label, "label", "--labels")
    need(run_column, "run", "--run-column")
    need(step_column, "step", "--step-column")
    if not labels:
        raise CkptselError(f"{path}: no label columns given; pass --labels L1,L2 naming the outcome columns")

    ids: list[str] = []
    first_row: dict[str, int] = {}
    for i, v in enumerate(df[id_column]):
        if v is None or v.strip() == "":
            raise CkptselError(f"{path}: {_row(path, i)}: id column {id_column!r} is empty; every row needs an id")
        v = v.strip()
        if v in first_row:
            raise CkptselError(f"{path}: {_row(path, i)}: duplicate id {v!r} in column {id_column!r} "
                               f"(first on {_row(path, first_row[v])}); ids must be unique")
        first_row[v] = i
        ids.append(v)

    label_values: dict[str, list[float | None]] = {}
    for label in labels:
        vals = []
        for i, cell in enumerate(df[label]):
            try:
                value = _parse_float(cell)
                if value is not None and not math.isfinite(value):
                    raise ValueError(cell)
                vals.append(value)
            except ValueError:
                raise CkptselError(f"{path}: {_row(path, i)}, label column {label!r}: {cell!r} is not a "
                                   "number; labels must be numeric (leave the cell empty if unknown)") from None
        if all(v is None for v in vals):
            raise CkptselError(f"{path}: label column {label!r} has no values; check --labels")
        label_values[label] = vals

    steps: list[int | None] = [None] * len(df)
    if step_column:
        for i, cell in enumerate(df[step_column]):
            try:
                f = _parse_float(cell)
            except ValueError:
                f = 0.5
            if f is not None and not (abs(f) < float("inf") and f == int(f)):  # inf, nan: not a step
                raise CkptselError(f"{path}: {_row(path, i)}, step column {step_column!r}: {cell!r} "
                                   "is not an integer step")
            steps[i] = None if f is None else int(f)
    runs = list(df[run_column]) if run_column else [None] * len(df)

    reserved = {id_column, *labels, *ignore} | ({run_column} if run_column else set())
    numeric: dict[str, list[float | None]] = {}
    categorical: dict[str, list[str | None]] = {}
    missing: dict[str, int] = {}
    for col in columns:
        if col in reserved:
            continue
        values = list(df[col])
        kind, bad = _classify(values)
        if bad is not None:
            raise CkptselError(
                f"{path}: {_row(path, bad)}, column {col!r}: {values[bad]!r} is not a number but the "
                "column's other values are; fix the cell or leave it empty (missing values are allowed)"
            )
        if kind == "numeric":
            numeric[col] = [_parse_float(v) for v in values]
        else:
            categorical[col] = [None if v is None or v.strip() == "" else v.strip() for v in values]
        n_missing = sum(v is None or v.strip() == "" for v in values)
        if n_missing:
            missing[col] = n_missing
    for label, vals in label_values.items():
        if n := sum(v is None for v in vals):
            missing[label] = n
    if not numeric and not categorical:
        raise CkptselError(f"{path}: no feature columns left after the id and label columns; "
                           "the predictor needs at least one pretraining-side feature")

    with store.transaction():
        store.put_spec(IMPORT_SPEC, kind="import-table", name="import-table", source=str(path),
                       command=f"ckptsel import-table {path} --id-column ... (a table with a row for {{ckpt}})")
        known = {c.id: c for c in store.checkpoints()}
        for i, cid in enumerate(ids):
            old = known.get(cid)
            ckpt = Checkpoint(
                id=cid,
                path=old.path if old else None,
                run=runs[i] if run_column else (old.run if old else None),
                step=steps[i] if step_column else (old.step if old else None),
                fingerprint=old.fingerprint if old else table_fingerprint(cid),
                metadata={**(old.metadata if old else {}), "source": str(path)},
            )
            store.upsert_checkpoint(ckpt)
            store.put_features(ckpt.fingerprint,
                               {k: v[i] for k, v in numeric.items()},
                               {k: v[i] for k, v in categorical.items()},
                               spec_hash=IMPORT_SPEC)
            for label, vals in label_values.items():
                if vals[i] is not None:
                    store.put_label(ckpt.fingerprint, label, vals[i], spec_hash=IMPORT_SPEC)
                else:  # an emptied cell removes the label this table set before
                    store.delete_label(ckpt.fingerprint, label, IMPORT_SPEC)
    return ImportSummary(str(path), len(ids), sorted(numeric), sorted(categorical), list(labels), missing)
