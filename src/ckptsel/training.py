"""Training the predictor on every labelled checkpoint, exporting it, registering it in MLflow."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

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
    label_spec: str | None = None  # the spec_id of the labels
    notes: list[str] = field(default_factory=list)  # which spec was read where there were several


_LOWER_IS_BETTER = ("loss", "perplexity", "ppl", "error")


def lower_is_better(target: str, store: Store | None = None) -> bool:
    """Whether a smaller value of ``target`` is the better outcome: what the user set
    (``import-table --lower-is-better/--higher-is-better``), else guessed from the name: targets
    whose last path part ends with loss, perplexity, ppl or error (e.g. ``sft/<task>/eval_loss``)."""
    said = store.direction(target) if store is not None else None
    if said is not None:
        return not said
    last = target.rsplit("/", 1)[-1].lower()
    return last.endswith(_LOWER_IS_BETTER)


def spec_notes(store: Store, choices: dict[str, dict[str, int]], chosen: dict[str, str], what: str) -> list[str]:
    """One line per name that had values under several specs: which was read, which were not."""
    notes = []
    for name, counts in sorted(choices.items()):
        used = chosen.get(name)
        others = ", ".join(f"{sid} ({store.spec_info(sid).get('name', 'unknown')}, {n})"
                           for sid, n in sorted(counts.items()) if sid != used)
        notes.append(f"{what} {name} has values under {len(counts)} specs; read spec {used} "
                     f"({store.spec_info(used).get('name', 'unknown')}, {counts.get(used, 0)} checkpoints), "
                     f"not {others}")
    return notes


def labelled_table(store: Store, target: str, *, label_spec: str | None = None,
                   feature_specs: dict[str, str] | None = None) -> LabelledTable:
    """Checkpoints with a value for ``target``, their features (label columns are never
    features: labels live in their own table) and their runs.

    One spec per label and per feature, never a mix: ``label_spec`` and ``feature_specs``
    ({feature: spec_id}) when given, else the spec with values for the most labelled
    checkpoints (``Store.feature_frame``); ``notes`` says where there was a choice.

    ``y`` is oriented so that higher is better: the stored value, negated for targets where
    lower is better (:func:`lower_is_better`), so "A fine-tunes better than B" is always
    ``y_A > y_B``."""
    label_set = store.label_set(target, spec=label_spec)
    labels = label_set.values
    if not labels:
        known = store.targets()
        raise CkptselError(f"no checkpoint has a label {target!r}" + (f" under spec {label_spec}" if label_spec else "")
                           + f"; known targets: {', '.join(known) if known else 'none (import a table with --labels)'}")
    full = store.feature_frame(list(labels), specs=feature_specs)
    frame = drop_empty_features(full)
    if not frame.numeric_names and not frame.categorical_names:
        raise CkptselError(f"the {len(labels)} checkpoints labelled {target!r} have no features; "
                           "import or compute pretraining-side features first")
    notes = spec_notes(store, {target: label_set.spec_choices} if label_set.spec_choices else {},
                       {target: label_set.spec}, "label")
    notes += spec_notes(store, frame.spec_choices, frame.specs, "feature")
    runs = {c.id: c.run for c in store.checkpoints()}
    sign = -1.0 if lower_is_better(target, store) else 1.0
    return LabelledTable(frame, sign * np.array([labels[c] for c in frame.ids], dtype=float),
                         [runs[c] for c in frame.ids], label_set.spec, notes)


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
    """Fit on all labelled checkpoints, register the model in MLflow (``register``), export it to
    ``models/<name>/<version>/`` under the version MLflow gave it and point ``alias`` at it
    (:mod:`ckptsel.exports`). The export records the spec behind every feature and the label."""
    import os
    import shutil

    from ckptsel import exports
    from ckptsel.evaluation import evaluate

    name = check_model_name(name) if name else default_model_name(target)
    with Store(ws.db_path, create=False) as store:
        table = labelled_table(store, target)
        used = {*table.frame.specs.values(), *([table.label_spec] if table.label_spec else [])}
        spec_info = {sid: store.spec_info(sid) for sid in sorted(used)}
    started = time.perf_counter()
    predictor = PairwisePredictor(seed=seed).fit(table.frame, table.y)
    fit_seconds = time.perf_counter() - started
    root = ws.models_dir / name
    staging = root / f".staging-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    predictor.save(staging, extra={"target": target, "name": name, "trained_at": time.time(),
                                   "label_spec": table.label_spec, "spec_info": spec_info})
    cv = None
    if cv_repeats and len(table.y) >= 5:
        cv = evaluate(table.frame, table.y, target=target, split="random:0.6", repeats=cv_repeats, seed=seed)
    out = {"name": name, "target": target, "n_checkpoints": len(table.y), "n_pairs": predictor.n_train_pairs_,
           "fit_seconds": round(fit_seconds, 3),
           "cv_accuracy_mean": cv["predictor"]["accuracy_mean"] if cv else None,
           "feature_importance": predictor.feature_importance(), "label_spec": table.label_spec,
           "feature_specs": dict(predictor.schema_.specs), "notes": table.notes}
    if register:
        from ckptsel.tracking import log_training

        out["registry"] = log_training(ws, predictor=predictor, frame=table.frame, target=target, name=name,
                                       alias=alias, export_dir=staging, cv_result=cv)
        version = out["registry"]["version"]
    else:  # not in MLflow: the next local version number
        version = str(max((int(v) for v in exports.versions(ws, name)), default=0) + 1)
    final = exports.version_dir(ws, name, version)
    if final.exists():  # a version number MLflow reuses after its registry was reset
        shutil.rmtree(final)
    staging.replace(final)
    if alias:
        exports.set_alias(ws, name, alias, version)
    out.update(version=version, alias=alias or None, export_dir=str(final))
    return out
