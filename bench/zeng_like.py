"""Development tables for the pairwise predictor: the synthetic Zeng-like generator (now
``ckptsel.synthetic``) and a loader for the real OLMo-1B fine-tuning table (Sun & Dredze,
"Amuro & Char", arXiv 2408.06663).

    python bench/zeng_like.py --seed 0 --out /tmp/t.csv [--regime calibrated|...|olmo] [--n 50]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ckptsel.synthetic import *  # noqa: F401,F403  (make_table, REGIMES, PROXIES, ...)
from ckptsel.synthetic import REGIMES, make_table

# ----------------------------------------------------------------------------------------
# Real data: OLMo-1B intermediate checkpoints fine-tuned on several sets (Sun & Dredze 2024).

OLMO_TABLE = Path(__file__).resolve().parents[1].parent / "shared/data/olmo1b-sft-outcomes/all_perf_table.csv"
# Fine-tuning set -> the eval dataset that measures it (its own task, default prompt format).
OLMO_OWN_EVAL = {"mnli": "mnli_matched", "paws": "paws", "socialiqa": "socialiqa", "xsum": "xsum",
                 "tulu": "llmbar_Natural"}


def _olmo_step(model_id: str) -> int | None:
    """Pretraining step of a model id; the final checkpoint ('main', 'olmo1b_original') is 739000."""
    m = re.search(r"(?:checkpoint-|ckpt)(\d+)", model_id)
    if m:
        return int(m.group(1))
    if "_main_" in model_id or model_id.startswith("olmo1b_original"):
        return 739000  # 'main' is the last released checkpoint, after step 738000
    return None


def load_olmo_table(path: str | Path = OLMO_TABLE) -> pd.DataFrame:
    """One row per OLMo-1B checkpoint: base-model 4-shot scores as `base_<eval>` features and
    each fine-tuning set's score on its own eval dataset as `ft_<set>` outcomes (4-shot evals).

    Base rows are `olmo1b_checkpoint-<step>_original_hf_4shots` (and `olmo1b_original_hf_4shots`
    for the final model); fine-tuned rows are `olmo1b_hf_ckpt<step>_<set>_<n>epoch_<lr>_4shots`
    (and `olmo1b_hf_main_...`). Base features that any checkpoint lacks are dropped.
    """
    raw = pd.read_csv(path, index_col=0)
    raw = raw[raw["model_id"].str.endswith("_4shots")].copy()
    raw["step"] = raw["model_id"].map(_olmo_step)
    base = raw[raw["model_id"].str.contains("original_hf_4shots")]
    feats = base.pivot_table(index="step", columns="eval dataset", values="Performance")
    feats = feats.dropna(axis=1).add_prefix("base_")
    ft = raw[raw["model_id"].str.contains(r"olmo1b_hf_(?:ckpt\d+|main)_")].copy()
    ft["ftset"] = ft["model_id"].str.extract(r"olmo1b_hf_(?:ckpt\d+|main)_([a-z]+)_")[0]
    cols = {}
    for ftset, ev in OLMO_OWN_EVAL.items():
        sel = ft[(ft["ftset"] == ftset) & (ft["eval dataset"] == ev)]
        cols[f"ft_{ftset}"] = sel.groupby("step")["Performance"].mean()
    outcomes = pd.DataFrame(cols)
    table = feats.join(outcomes, how="inner").reset_index()
    table.insert(0, "model_id", "olmo1b_step" + table["step"].astype(str))
    table["log_step"] = np.log10(table.pop("step"))
    return table


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--regime", default="calibrated", choices=sorted(REGIMES) + ["olmo"])
    ap.add_argument("--n", type=int, default=None, help="rows (default: the regime's)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    table = load_olmo_table() if a.regime == "olmo" else make_table(a.seed, a.regime, n=a.n)
    table.to_csv(a.out, index=False)
    print(f"wrote {len(table)} rows x {table.shape[1]} columns to {a.out}")


if __name__ == "__main__":
    main()
