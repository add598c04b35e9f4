"""Training the predictor on every labelled checkpoint, exporting it, registering it in MLflow."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ckptsel.errors import CkptselError
from ckptsel.evaluation import drop_empty_features
from ckptsel.predictor import PairwisePredictor
from ckptsel.store import FeatureFrame, Store
from ckptsel.workspace import Workspace, check_model_name


@dataclass
class LabelledTable:
    frame: FeatureFrame
    y: np.ndarray
    runs: list[str | None]


_LOWER_IS_BETTER = ("loss", "perplexity", "ppl", "error")


def lower_is_better(target: str) -> bool:
    """Whether a smaller value of ``target`` is the better outcome: targets whose last path
    part ends with loss, perplexity, ppl or error (e.g. ``sft/<task>/eval_loss``)."""
    last = target.rsplit("/", 1)[-1].lower()
    return last.endswith(_LOWER_IS_BETTER)


def labelled_table(store: Store, target: str) -> LabelledTable:
    """Checkpoints with a value for ``target``, their features (label columns are never
    features: labels live in their own table) and their runs.

    ``y`` is oriented so that higher is better: the stored value, negated for targets where
    lower is better (:func:`lower_is_better`), so "A fine-tunes better than B" is always
    ``y_A > y_B``."""
    labels = store.labels(target)
    if not labels:
        known = store.targets()
        raise CkptselError(f"no checkpoint has a label {target!r}; known targets: "
                           f"{', '.join(known) if known else 'none (import a table with --labels)'}")
    frame = store.feature_frame()
    rows = [i for i, cid in enumerate(frame.ids) if cid in labels]
    frame = drop_empty_features(frame.take(rows))
    if not frame.numeric_names and not frame.categorical_names:
        raise CkptselError(f"the {len(rows)} checkpoints labelled {target!r} have no features; "
                           "import or compute pretraining-side features first")
    runs = {c.id: c.run for c in store.checkpoints()}
    sign = -1.0 if lower_is_better(target) else 1.0
    return LabelledTable(frame, sign * np.array([labels[c] for c in frame.ids], dtype=float),
                         [runs[c] for c in frame.ids])


def group_values(table: LabelledTable, column: str) -> list:
    """The group of every checkpoint for ``--split group:COLUMN`` (a categorical feature or 'run')."""
    if column == "run":
        return table.runs
    try:
        return list(table.frame.column(column))
    except KeyError:
        raise CkptselError(f"--split group:{column}: no feature or 'run' named {column!r}; categorical "
                           f"features: {', '.join(table.frame.categorical_names) or 'none'}") from None


def default_model_name(target: str) -> str:
    return check_model_name(("ckptsel-" + "".join(c if c.isalnum() or c in "._-" else "-" for c in target))[:100])


def train(ws: Workspace, target: str, *, name: str | None = None, alias: str | None = "champion",
          seed: int = 0, cv_repeats: int = 5, register: bool = True) -> dict:
    """Fit on all labelled checkpoints, export to ``models/<name>/``, log and register in MLflow."""
    from ckptsel.evaluation import evaluate

    name = check_model_name(name) if name else default_model_name(target)
    with Store(ws.db_path, create=False) as store:
        table = labelled_table(store, target)
    started = time.perf_counter()
    predictor = PairwisePredictor(seed=seed).fit(table.frame, table.y)
    fit_seconds = time.perf_counter() - started
    export_dir = predictor.save(ws.model_dir(name), extra={"target": target, "name": name,
                                                           "trained_at": time.time()})
    cv = None
    if cv_repeats and len(table.y) >= 5:
        cv = evaluate(table.frame, table.y, target=target, split="random:0.6", repeats=cv_repeats, seed=seed)
    out = {"name": name, "target": target, "n_checkpoints": len(table.y), "n_pairs": predictor.n_train_pairs_,
           "fit_seconds": round(fit_seconds, 3), "export_dir": str(export_dir),
           "cv_accuracy_mean": cv["predictor"]["accuracy_mean"] if cv else None,
           "feature_importance": predictor.feature_importance()}
    if register:
        from ckptsel.tracking import log_training

        out["registry"] = log_training(ws, predictor=predictor, frame=table.frame, target=target, name=name,
                                       alias=alias, export_dir=export_dir, cv_result=cv)
    return out
