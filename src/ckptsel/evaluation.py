"""The evaluation protocol: pairwise accuracy on checkpoints the predictor never saw.

Each repeat splits the *checkpoints* (not the pairs): ``random:F`` draws a fraction F for
training (Zeng et al., arXiv 2504.12491, use random 60/40 splits of the models), and
``group:COLUMN`` leaves one group out per repeat (one run, one data mix, ...), and
``group:COLUMN:F`` draws a fraction F of the *groups* for training per repeat (so the held-out
side has pairs across several held-out groups, and no group sits on both sides). The
predictor is fitted on pairs among training checkpoints only and scored on the unordered
pairs among the held-out checkpoints whose target values differ. A prediction of exactly
1/2 counts 1/2. Baselines are the single-feature rules of ``DirectionBaseline``, with the
direction chosen on the training checkpoints only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ckptsel.errors import CkptselError
from ckptsel.predictor import DirectionBaseline, PairwisePredictor, pair_scores
from ckptsel.store import FeatureFrame


@dataclass(frozen=True)
class Split:
    kind: str  # "random" or "group"
    fraction: float = 0.6
    column: str | None = None
    group_fraction: float | None = None  # group:COLUMN:F; None = leave one group out

    @classmethod
    def parse(cls, text: str) -> "Split":
        kind, _, arg = text.partition(":")
        if kind == "random":
            try:
                fraction = float(arg or 0.6)
            except ValueError:
                fraction = -1.0
            if not 0 < fraction < 1:
                raise CkptselError(f"--split {text!r}: the training fraction must be in (0, 1), e.g. random:0.6")
            return cls("random", fraction)
        if kind == "group" and arg:
            column, _, frac = arg.partition(":")
            if not frac:
                return cls("group", column=column)
            try:
                fraction = float(frac)
            except ValueError:
                fraction = -1.0
            if not column or not 0 < fraction < 1:
                raise CkptselError(f"--split {text!r}: use group:COLUMN (leave one group out) or "
                                   "group:COLUMN:F with a training fraction of groups F in (0, 1), e.g. group:run:0.6")
            return cls("group", column=column, group_fraction=fraction)
        raise CkptselError(f"--split {text!r} is not understood; use random:0.6, group:COLUMN or group:COLUMN:0.6 "
                           "(COLUMN may be a categorical feature or 'run')")

    def __str__(self) -> str:
        if self.kind == "random":
            return f"random:{self.fraction:g}"
        return f"group:{self.column}" + (f":{self.group_fraction:g}" if self.group_fraction else "")


def plain_perplexity_rules(names: Sequence[str]) -> dict[str, int]:
    """The rule "lower perplexity fine-tunes better" for every plain (causal-LM) perplexity
    feature of the checkpoint itself, ``ppl/<corpus>/token_perplexity`` (no window prefix)."""
    return {f: -1 for f in names if f.startswith("ppl/") and f.endswith("/token_perplexity")}


def correctness(prob: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """1 for a right call, 0 for a wrong one, 1/2 for a prediction of exactly 1/2."""
    return np.where(prob == 0.5, 0.5, ((prob > 0.5) == truth).astype(float))


def drop_empty_features(frame: FeatureFrame) -> FeatureFrame:
    """Drop features missing for every checkpoint of the frame (nothing to learn from)."""
    keep_num = [j for j in range(len(frame.numeric_names)) if not np.all(np.isnan(frame.numeric[:, j]))]
    keep_cat = [j for j in range(len(frame.categorical_names))
                if any(v is not None for v in frame.categorical[:, j])]
    names = [frame.numeric_names[j] for j in keep_num] + [frame.categorical_names[j] for j in keep_cat]
    return FeatureFrame(list(frame.ids), [frame.numeric_names[j] for j in keep_num], frame.numeric[:, keep_num],
                        [frame.categorical_names[j] for j in keep_cat], frame.categorical[:, keep_cat],
                        {n: frame.specs[n] for n in names if n in frame.specs},
                        {n: frame.spec_choices[n] for n in names if n in frame.spec_choices})


def splits(n: int, split: Split, repeats: int, seed: int,
           groups: Sequence | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index arrays for each repeat."""
    if split.kind == "random":
        n_train = int(round(split.fraction * n))
        if n_train < 2 or n - n_train < 2:
            raise CkptselError(f"{n} labelled checkpoints are too few for a {split} split "
                               "(need two on each side)")
        out = []
        for r in range(repeats):
            order = np.random.default_rng([seed, r]).permutation(n)
            out.append((np.sort(order[:n_train]), np.sort(order[n_train:])))
        return out
    if groups is None:
        raise CkptselError(f"--split {split} needs a group for every checkpoint")
    keys = np.array(["" if g is None else str(g) for g in groups], dtype=object)
    if (keys == "").any():
        raise CkptselError(f"--split {split}: {int((keys == '').sum())} labelled checkpoints have no "
                           f"{split.column!r}; fill it in or use --split random:0.6")
    names = sorted(set(keys))
    if len(names) < 2:
        raise CkptselError(f"--split {split}: all checkpoints are in one group; nothing to leave out")
    if split.group_fraction is None:
        return [(np.flatnonzero(keys != g), np.flatnonzero(keys == g)) for g in names]
    n_train = int(round(split.group_fraction * len(names)))
    if n_train < 1 or len(names) - n_train < 1:
        raise CkptselError(f"{len(names)} groups are too few for a {split} split (need one on each side); "
                           f"use group:{split.column}")
    out = []
    for r in range(repeats):
        order = np.random.default_rng([seed, r]).permutation(len(names))
        train_groups = {names[i] for i in order[:n_train]}
        in_train = np.array([k in train_groups for k in keys])
        out.append((np.flatnonzero(in_train), np.flatnonzero(~in_train)))
    return out


def evaluate(frame: FeatureFrame, y: Sequence[float], *, target: str, split: Split | str = "random:0.6",
             repeats: int = 20, seed: int = 0, groups: Sequence | None = None,
             make_predictor: Callable[[int], PairwisePredictor] | None = None,
             fixed_rules: dict[str, int] | None = None, progress: bool = False) -> dict:
    """Run the protocol; returns the JSON-ready result (see the module docstring).

    ``fixed_rules`` maps numeric features to a fixed direction (+1: higher is better, -1:
    lower is better), scored on the same held-out pairs without looking at the training side:
    e.g. ``{"ppl/heldout/token_perplexity": -1}``, the rule "lower perplexity fine-tunes
    better" that Zeng et al. (arXiv 2504.12491) found misleading. Results go to
    ``result["fixed_rules"]`` keyed ``"<feature> (lower|higher is better)"``."""
    split = Split.parse(split) if isinstance(split, str) else split
    y = np.asarray(y, dtype=float)
    make_predictor = make_predictor or (lambda s: PairwisePredictor(seed=s))
    folds = splits(len(y), split, repeats, seed, groups)

    pred_acc, pair_counts, gaps, pred_right, no_preference, train_sizes = [], [], [], [], 0, []
    base_acc: dict[str, list[float]] = {f: [] for f in frame.numeric_names}
    fixed = {f: int(np.sign(v)) for f, v in (fixed_rules or {}).items() if f in frame.numeric_names and v}
    fixed_acc: dict[str, list[float]] = {f: [] for f in fixed}
    iterator = folds
    if progress:
        from tqdm import tqdm
        iterator = tqdm(folds, desc=f"evaluate {target}", unit="split", leave=False)
    for r, (train, test) in enumerate(iterator):
        ia, ib = np.triu_indices(len(test), k=1)
        ia, ib = test[ia], test[ib]
        differ = y[ia] != y[ib]
        ia, ib = ia[differ], ib[differ]
        if len(ia) == 0 or len(np.unique(y[train])) < 2:
            continue
        truth = y[ia] > y[ib]
        model = make_predictor(seed + r).fit(frame.take(train), y[train])
        prob = model.predict_proba(frame.take(ia), frame.take(ib))
        right = correctness(prob, truth)
        no_preference += int((prob == 0.5).sum())
        train_sizes.append(len(train))
        pred_acc.append(right.mean())
        pair_counts.append(len(ia))
        gaps.append(np.abs(y[ia] - y[ib]))
        pred_right.append(right)
        for j, f in enumerate(frame.numeric_names):
            col = frame.numeric[:, j]
            base = DirectionBaseline(f).fit(col[train], y[train])
            base_acc[f].append(correctness(pair_scores(col[ia], col[ib], base.sign_), truth).mean())
            if f in fixed:
                fixed_acc[f].append(correctness(pair_scores(col[ia], col[ib], fixed[f]), truth).mean())
    if not pred_acc:
        raise CkptselError(f"no split of {split} has held-out pairs with different {target!r} values; "
                           "label more checkpoints or use another split")

    gaps_all, right_all = np.concatenate(gaps), np.concatenate(pred_right)
    edges = np.quantile(gaps_all, [0, 0.25, 0.5, 0.75, 1.0])
    bucket = np.clip(np.searchsorted(edges[1:-1], gaps_all, side="right"), 0, 3)
    by_gap = [{"quartile": q + 1, "gap_min": float(gaps_all[bucket == q].min()) if (bucket == q).any() else None,
               "gap_max": float(gaps_all[bucket == q].max()) if (bucket == q).any() else None,
               "pairs": int((bucket == q).sum()),
               "accuracy": float(right_all[bucket == q].mean()) if (bucket == q).any() else None}
              for q in range(4)]
    counts = sorted(set(pair_counts))
    warnings = []
    if split.kind == "group" and split.group_fraction is None and len(folds) != repeats:
        warnings.append(f"--split {split} leaves each of its {len(folds)} groups out once: {len(folds)} repeats, "
                        f"not the {repeats} asked for (group:{split.column}:F draws random group splits)")
    if len(pred_acc) < len(folds):
        warnings.append(f"{len(folds) - len(pred_acc)} of {len(folds)} splits were skipped: no held-out pairs with "
                        f"different {target!r} values, or one training value only")
    if no_preference >= 0.5 * len(right_all):
        warnings.append(f"the predictor had no preference (P = 1/2 exactly) on {no_preference / len(right_all):.0%} "
                        f"of held-out pairs: {min(train_sizes)}-{max(train_sizes)} labelled training checkpoints "
                        "are too few to learn from; label more checkpoints")
    return {
        "target": target,
        "split": str(split),
        "repeats": len(pred_acc),
        "n_checkpoints": int(len(y)),
        "pairs_per_repeat": counts[0] if len(counts) == 1 else float(np.mean(pair_counts)),
        "predictor": {"accuracy_mean": float(np.mean(pred_acc)), "accuracy_std": float(np.std(pred_acc))},
        "baselines": {f: {"accuracy_mean": float(np.mean(v)), "accuracy_std": float(np.std(v))}
                      for f, v in base_acc.items()},
        "accuracy_by_gap_quartile": by_gap,
        "fixed_rules": {f"{f} ({'lower' if fixed[f] < 0 else 'higher'} is better)":
                        {"accuracy_mean": float(np.mean(v)), "accuracy_std": float(np.std(v))}
                        for f, v in fixed_acc.items()},
        "warnings": warnings,
    }


def format_result(result: dict) -> str:
    """The human-readable table printed without --json."""
    lines = [f"target {result['target']}  split {result['split']}  repeats {result['repeats']}  "
             f"checkpoints {result['n_checkpoints']}  test pairs/repeat {result['pairs_per_repeat']}", ""]
    rows = [("predictor (LightGBM + ridge, pairwise)", result["predictor"])]
    rows += [(f"fixed rule: {f}", v) for f, v in result.get("fixed_rules", {}).items()]
    rows += sorted(((f"baseline: {f}", v) for f, v in result["baselines"].items()),
                   key=lambda kv: -kv[1]["accuracy_mean"])
    width = max(len(name) for name, _ in rows)
    lines.append(f"{'model':<{width}}  accuracy   ± std")
    for name, v in rows:
        lines.append(f"{name:<{width}}  {v['accuracy_mean']:.3f}     {v['accuracy_std']:.3f}")
    lines.append("")
    lines.append("predictor accuracy by outcome gap |Δtarget| (quartiles over all test pairs):")
    for q in result["accuracy_by_gap_quartile"]:
        if q["pairs"]:
            lines.append(f"  Q{q['quartile']}  gap {q['gap_min']:.4g}..{q['gap_max']:.4g}  "
                         f"pairs {q['pairs']:>5}  accuracy {q['accuracy']:.3f}")
    return "\n".join(lines)
