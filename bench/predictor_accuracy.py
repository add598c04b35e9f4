"""Pairwise accuracy of the default predictor against the paper's recipe on Zeng-like tables.

Runs ckptsel's own evaluation protocol (random 60/40 splits of the checkpoints, 20 repeats,
unordered held-out pairs whose targets differ) on synthetic tables from ``ckptsel.synthetic``
for every regime and three table seeds that were NOT used to choose the defaults (6, 7, 8),
and compares:

- ``default``: ``PairwisePredictor()`` (quantile pair features, antisymmetric LightGBM with
  small-data parameters, blended with a shrunk pointwise ridge);
- ``paper``: LightGBM alone with the library's default parameters on the same pair features
  (our stand-in for Zeng et al.'s learning-to-compare classifier, arXiv 2504.12491);
- the best single indicator (direction learned on the training checkpoints).

    python bench/predictor_accuracy.py [--regimes calibrated,small] [--seeds 6,7,8] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from ckptsel.evaluation import evaluate
from ckptsel.predictor import PairwisePredictor
from ckptsel.store import FeatureFrame
from ckptsel.synthetic import CONFIGS, OUTCOMES, PROXIES, REGIMES, make_table

PAPER = dict(n_estimators=100, learning_rate=0.1, num_leaves=31, max_depth=-1, min_child_samples=20,
             subsample=1.0, colsample_bytree=1.0, reg_lambda=0.0, ridge_weight=0.0)


def frame_of(df) -> FeatureFrame:
    numeric = PROXIES + ["learning_rate"]
    categorical = [c for c in CONFIGS if c != "learning_rate"]
    return FeatureFrame(list(df["model_id"]), numeric, df[numeric].to_numpy(float),
                        categorical, df[categorical].astype(object).to_numpy())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--regimes", default=",".join(r for r in REGIMES))
    ap.add_argument("--seeds", default="6,7,8")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = {}
    started = time.perf_counter()
    for regime in args.regimes.split(","):
        acc = {"default": [], "paper": [], "best_single": []}
        for seed in seeds:
            df = make_table(seed, regime)
            frame = frame_of(df)
            for target in OUTCOMES:
                y = df[target].to_numpy(float)
                common = dict(target=target, split="random:0.6", repeats=args.repeats, seed=0)
                ours = evaluate(frame, y, **common)
                paper = evaluate(frame, y, make_predictor=lambda s: PairwisePredictor(seed=s, **PAPER), **common)
                acc["default"].append(ours["predictor"]["accuracy_mean"])
                acc["paper"].append(paper["predictor"]["accuracy_mean"])
                acc["best_single"].append(max(v["accuracy_mean"] for v in ours["baselines"].values()))
        rows[regime] = {k: float(np.mean(v)) for k, v in acc.items()}
        print(f"{regime:<14} default {rows[regime]['default']:.3f}  paper {rows[regime]['paper']:.3f}  "
              f"best single {rows[regime]['best_single']:.3f}  ({time.perf_counter() - started:.0f}s)",
              file=sys.stderr, flush=True)
    mean = {k: float(np.mean([r[k] for r in rows.values()])) for k in ("default", "paper", "best_single")}
    if args.json:
        print(json.dumps({"regimes": rows, "mean": mean, "seeds": seeds, "repeats": args.repeats}, indent=2))
        return
    print(f"{'regime':<14} {'default':>8} {'paper':>8} {'best single':>12}")
    for regime, r in rows.items():
        print(f"{regime:<14} {r['default']:>8.3f} {r['paper']:>8.3f} {r['best_single']:>12.3f}")
    print(f"{'mean':<14} {mean['default']:>8.3f} {mean['paper']:>8.3f} {mean['best_single']:>12.3f}")
    print(f"RATIO default_error/paper_error = {(1 - mean['default']) / (1 - mean['paper']):.3f} (lower is better)")


if __name__ == "__main__":
    main()
