"""Stability of downstream scores along a pretraining run, after Nishida, Isonuma & Oda,
*Instability in Downstream Task Performance During LLM Pretraining* (arXiv 2510.04848, §2):

- task level, the mean total variation of a score along the run's checkpoints (MTV);
- example level, the instability score: how often per-example predictions flip between
  neighbouring checkpoints (IS).

Checkpoints are ordered by step. A checkpoint without a value (or without predictions) is
skipped: its neighbours become adjacent. Trailing-window versions of both, computed for each
checkpoint over the last K checkpoints up to and including it, are stored as features
``stability/<feature>/mtv@K`` and ``stability/<feature>/is@K`` (spec hash
``stability-window:k=K``) so that the predictor can use them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ckptsel.errors import CkptselError
from ckptsel.store import Checkpoint, Store

STABILITY_PREFIX = "stability/"
MAX_PANELS = 12
DEFAULT_PLOT_WINDOW = 5


def window_spec(k: int) -> str:
    """Spec hash of the trailing-window features of window size ``k``."""
    return f"stability-window:k={k}"


def _present(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


def mean_total_variation(values: Sequence[float | None]) -> float | None:
    """Mean total variation of a score along checkpoints ordered by step:

        MTV = 1/(m-1) · Σ_{t=1}^{m-1} |L(θ_{t+1}) − L(θ_t)|

    (Nishida, Isonuma & Oda, arXiv 2510.04848, §2). Missing values (None or NaN) are skipped:
    the checkpoint is left out and m counts the checkpoints with a value. None when m < 2.
    """
    x = _present(values)
    if len(x) < 2:
        return None
    return float(np.mean(np.abs(np.diff(np.asarray(x)))))


def instability_score(predictions: Sequence[np.ndarray | None]) -> float | None:
    """Instability score of per-example predictions along checkpoints ordered by step:

        IS = 1/(m-1) · Σ_{t=1}^{m-1} (1/N) · Σ_{i=1}^{N} 1[ŷ_i(θ_{t+1}) ≠ ŷ_i(θ_t)]

    the mean over adjacent checkpoint pairs of the fraction of the N examples whose prediction
    changes (Nishida, Isonuma & Oda, arXiv 2510.04848, §2). Checkpoints without predictions
    (None) are skipped; None when fewer than two have them. Every array must cover the same
    N examples in the same order.
    """
    arrays = [np.asarray(p).ravel() for p in predictions if p is not None]
    if len(arrays) < 2:
        return None
    n = {len(a) for a in arrays}
    if len(n) != 1:
        raise CkptselError(f"per-example predictions cover different numbers of examples ({sorted(n)}); "
                           "recompute them with one task spec for every checkpoint")
    if n == {0}:
        return None
    return float(np.mean([np.mean(a != b) for a, b in zip(arrays[:-1], arrays[1:])]))


def trailing(values: Sequence, k: int, statistic: Callable[[list], float | None]) -> list[float | None]:
    """``statistic`` over a trailing window at each checkpoint.

    The window of checkpoint j holds the last ``min(k, n_j)`` checkpoints *that have a value*
    up to and including j (n_j: how many have one up to j), so it is shorter at the start of
    the run. A checkpoint without a value gets None. MTV and IS need two values: the first
    checkpoint of a run has None.
    """
    if k < 2:
        raise CkptselError(f"window {k} is too small: a trailing window needs at least 2 checkpoints (--window K>=2)")
    out: list[float | None] = []
    seen: list = []
    for v in values:
        missing = v is None or (isinstance(v, float) and math.isnan(v))
        if missing:
            out.append(None)
            continue
        seen.append(v)
        out.append(statistic(seen[-k:]))
    return out


def trailing_mtv(values: Sequence[float | None], k: int) -> list[float | None]:
    """MTV over the trailing window of each checkpoint (see ``trailing``)."""
    return trailing(values, k, mean_total_variation)


def trailing_is(predictions: Sequence[np.ndarray | None], k: int) -> list[float | None]:
    """IS over the trailing window of each checkpoint (see ``trailing``)."""
    return trailing(predictions, k, instability_score)


def trailing_mean(values: Sequence[float | None], k: int) -> list[float | None]:
    """The window-averaged curve: mean of the values in the trailing window (see ``trailing``)."""
    return trailing(values, max(k, 2), lambda w: float(np.mean(w)))


# -- a run in the store ---------------------------------------------------------------------------
def run_checkpoints(store: Store, run: str) -> list[Checkpoint]:
    """The run's checkpoints ordered by step (ties by id)."""
    ckpts = [c for c in store.checkpoints() if c.run == run]
    if not ckpts:
        runs = sorted({c.run for c in store.checkpoints() if c.run})
        hint = ", ".join(map(repr, runs[:8])) + (" ..." if len(runs) > 8 else "")
        raise CkptselError(f"no checkpoints of run {run!r} in {store.path}; runs in the store: {hint or 'none'}")
    unstepped = [c.id for c in ckpts if c.step is None]
    if unstepped:
        raise CkptselError(f"run {run!r} has {len(unstepped)} checkpoints without a step (e.g. {unstepped[0]!r}); "
                           "stability needs steps to order them (import with --step-column)")
    return sorted(ckpts, key=lambda c: (c.step, c.id))


# Stores written before predictions were kept per metric hold one array per k-shot task,
# ``kshot/<task>``: the argmax-LL picks (acc) or the correct flags (exact_match).
LEGACY_PREDICTION_METRICS = ("acc", "exact_match")


def predictions_task(feature: str, tasks: Sequence[str]) -> str | None:
    """The stored predictions behind a feature: those under the feature's own name
    (``kshot/<task>/acc_norm``), else, for an ``acc`` or ``exact_match`` feature, the task's
    legacy array (``kshot/<task>``, see :data:`LEGACY_PREDICTION_METRICS`); None otherwise, so
    no metric's instability is read from another metric's picks."""
    if feature in tasks:
        return feature
    head, _, metric = feature.rpartition("/")
    return head if metric in LEGACY_PREDICTION_METRICS and head in tasks else None


def default_features(names: Sequence[str]) -> list[str]:
    """Every numeric feature except stability features and ``step`` (the ordering itself)."""
    return [n for n in names if not n.startswith(STABILITY_PREFIX) and n != "step"]


def run_stability(store: Store, run: str, features: Sequence[str] | None = None, *,
                  window: int | None = None, write: bool = True) -> dict:
    """MTV and IS of each feature along ``run``; with ``window``, also the trailing-window
    values per checkpoint, written to the store when ``write``.

    Returns ``{"run", "n_checkpoints", "features": {name: {"mtv", "is"[, "window"]}}}`` where
    ``window`` is ``{"k": K, "mtv": {checkpoint id: value}, "is": {checkpoint id: value} or None}``,
    listing the checkpoints that have a value (or predictions); the first of them has None.
    """
    if window is not None and window < 2:
        raise CkptselError(f"--window {window} is too small: a trailing window needs at least 2 checkpoints")
    ckpts = run_checkpoints(store, run)
    frame = store.feature_frame([c.id for c in ckpts])
    names = list(features) if features else default_features(frame.numeric_names)
    unknown = [n for n in names if n not in frame.numeric_names]
    if unknown:
        have = default_features(frame.numeric_names)
        raise CkptselError(f"run {run!r} has no numeric feature {unknown[0]!r}; it has {len(have)}, e.g. "
                           + ", ".join(map(repr, have[:5])) + " (see `ckptsel features show CKPT`)")
    if not names:
        raise CkptselError(f"run {run!r} has no numeric features; import or compute some first "
                           "(`ckptsel import-lm-eval`, `ckptsel indicators`)")
    tasks = store.prediction_tasks()
    fps = [c.fingerprint for c in ckpts]
    out: dict = {"run": run, "n_checkpoints": len(ckpts), "features": {}}
    to_write: dict[str, dict[str, float | None]] = {fp: {} for fp in fps}
    for name in names:
        values = [None if v != v else float(v) for v in frame.column(name)]
        task = predictions_task(name, tasks)
        preds = None
        if task is not None:
            stored = store.predictions(task, fps)
            preds = [stored.get(fp) for fp in fps]
        try:
            is_ = None if preds is None else instability_score(preds)
        except CkptselError as e:
            raise CkptselError(f"predictions {task!r} of run {run!r}: {e}") from None
        entry = {"mtv": mean_total_variation(values), "is": is_}
        if window is not None:
            mtv_w = trailing_mtv(values, window)
            is_w = None if is_ is None else trailing_is(preds, window)
            entry["window"] = {
                "k": window,
                "mtv": {c.id: v for c, v, x in zip(ckpts, mtv_w, values) if x is not None},
                "is": None if is_w is None else {c.id: v for c, v, p in zip(ckpts, is_w, preds) if p is not None},
            }
            for i, fp in enumerate(fps):
                if values[i] is not None:
                    to_write[fp][f"{STABILITY_PREFIX}{name}/mtv@{window}"] = mtv_w[i]
                if is_w is not None and preds[i] is not None:
                    to_write[fp][f"{STABILITY_PREFIX}{name}/is@{window}"] = is_w[i]
        out["features"][name] = entry
    if window is not None and write:
        with store.transaction():
            store.put_spec(window_spec(window), kind="stability", name=f"stability window {window}",
                           command=f"ckptsel stability --run {run} --window {window}")
            for fp, feats in to_write.items():
                if feats:
                    store.put_features(fp, feats, spec_hash=window_spec(window))
    return out


def format_stability(result: dict) -> str:
    """A plain-text table of ``run_stability``'s result."""
    feats = result["features"]
    width = max([len("feature")] + [len(n) for n in feats])
    lines = [f"run {result['run']}: {result['n_checkpoints']} checkpoints, {len(feats)} features",
             f"{'feature':<{width}}  {'MTV':>10}  {'IS':>8}"]
    for name, e in feats.items():
        mtv = "-" if e["mtv"] is None else f"{e['mtv']:.4g}"
        is_ = "-" if e["is"] is None else f"{e['is']:.4f}"
        lines.append(f"{name:<{width}}  {mtv:>10}  {is_:>8}")
    ks = {e["window"]["k"] for e in feats.values() if "window" in e}
    if ks:
        lines.append(f"stored trailing-window features stability/<feature>/mtv@{ks.pop()} (and is@K where "
                     "predictions exist) for each checkpoint")
    return "\n".join(lines)


# -- plot ---------------------------------------------------------------------------------------
def plot_stability(store: Store, run: str, features: Sequence[str], path: str | Path, *,
                   window: int = DEFAULT_PLOT_WINDOW) -> tuple[Path, int]:
    """PNG of each feature's curve over steps (thin, with markers) and its trailing mean over
    ``window`` checkpoints (thick), one small panel per feature (at most ``MAX_PANELS``), each
    titled with its MTV. The step axis is logarithmic (symlog, so step 0 stays) when the steps
    span more than two decades; so is a panel's value axis when its values do (perplexities). Returns the path and the number of panels drawn."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    ckpts = run_checkpoints(store, run)
    frame = store.feature_frame([c.id for c in ckpts])
    names = list(features)[:MAX_PANELS]
    steps = np.array([c.step for c in ckpts], dtype=float)
    positive = steps[steps > 0]
    log_x = positive.size > 0 and positive.max() / positive.min() > 100

    ncols = min(4, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(3.6 * ncols, 2.7 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, name in zip(axes.flat, names):
        values = [None if v != v else float(v) for v in frame.column(name)]
        have = np.array([v is not None for v in values])
        x = steps[have]
        y = np.array([v for v in values if v is not None])
        smooth = np.array([v for v in trailing_mean(values, window) if v is not None])
        ax.plot(x, y, "o-", color="tab:blue", lw=0.8, ms=2.5, alpha=0.6, label="per checkpoint")
        ax.plot(x, smooth, "-", color="tab:red", lw=2.0, label=f"trailing mean (K={window})")
        mtv = mean_total_variation(values)
        head, _, metric = name.removeprefix("lmeval/").rpartition("/")
        if len(head) > 46:
            head = head[:45] + "…"
        mtv_text = "-" if mtv is None else f"{mtv:.4g}"
        ax.set_title(f"{head}\n{metric}   MTV = {mtv_text}" if head else f"{metric}\nMTV = {mtv_text}", fontsize=8)
        ax.tick_params(labelsize=7)
        if log_x:
            ax.set_xscale("symlog", linthresh=1)
        if y.size and y.min() > 0 and y.max() / y.min() > 100:  # e.g. perplexities
            ax.set_yscale("log")
        ax.grid(alpha=0.3, lw=0.5)
    for i, ax in enumerate(axes.flat):
        if i >= len(names):
            ax.set_visible(False)
        elif i + ncols >= len(names):  # nothing drawn below it
            ax.set_xlabel("step" + (" (symlog)" if log_x else ""), fontsize=8)
    axes.flat[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{run}: {len(ckpts)} checkpoints", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)
    return path, len(names)
