"""The research result of the paper-mini zoo: a markdown table and one plot, from a demo workspace.

    .venv/bin/ckptsel demo --preset paper-mini --workspace /tmp/pm     # about 45 min on 2 cores
    .venv/bin/python bench/paper_mini_summary.py /tmp/pm --png docs/paper_mini.png

Reads the evaluations the demo saved (``<workspace>/evaluations/*.json``: every target, the
``group:run`` and ``random:0.6`` splits) and prints, per target and split: the learned
predictor, plain perplexity with the fixed rule "lower is better" (mean over the three held-out
corpora), every indicator family's best member (direction learned on the training side), all
as pairwise accuracy mean ± std over repeats. The plot shows the same for the predictor, plain
perplexity and the three best single indicators.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def family(name: str) -> str:
    for prefix in ("ppl_sc/", "ppl/", "kshot/", "zoo/"):
        if name.startswith(prefix):
            return prefix.rstrip("/")
    return "other"


def load(ws: Path) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for f in sorted((ws / "evaluations").glob("*.json")):
        r = json.loads(f.read_text())
        out.setdefault(r["target"], {})[r["split"]] = r
    if not out:
        raise SystemExit(f"no evaluations in {ws / 'evaluations'}; run ckptsel demo --preset paper-mini first")
    return out


def ppl_rule(r: dict) -> tuple[float, float]:
    rules = r.get("fixed_rules", {})
    return (float(np.mean([v["accuracy_mean"] for v in rules.values()])),
            float(np.mean([v["accuracy_std"] for v in rules.values()]))) if rules else (float("nan"), float("nan"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workspace", type=Path)
    ap.add_argument("--png", type=Path, help="write the plot here")
    args = ap.parse_args(argv)
    results = load(args.workspace)

    print("| target | split | checkpoints | test pairs/repeat | learned predictor | plain perplexity (lower is better) "
          "| best ppl_sc | best k-shot | best config feature | best single indicator |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for target, by_split in results.items():
        for split in sorted(by_split, key=lambda s: (not s.startswith("group"), s)):
            r = by_split[split]
            base = r["baselines"]
            cells = []
            for fam in ("ppl_sc", "kshot", "zoo"):
                names = [f for f in base if family(f) == fam and not f.startswith(("avg@", "ens@"))]
                if names:
                    best = max(names, key=lambda f: base[f]["accuracy_mean"])
                    cells.append(f"{base[best]['accuracy_mean']:.3f} (`{best}`)")
                else:
                    cells.append("")
            best = max(base, key=lambda f: base[f]["accuracy_mean"])
            pm, ps = ppl_rule(r)
            p = r["predictor"]
            print(f"| `{target}` | {split} | {r['n_checkpoints']} | {r['pairs_per_repeat']:.4g} | "
                  f"**{p['accuracy_mean']:.3f}** ± {p['accuracy_std']:.3f} | {pm:.3f} ± {ps:.3f} | "
                  + " | ".join(cells) + f" | {base[best]['accuracy_mean']:.3f} (`{best}`) |")

    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        targets = list(results)
        splits = sorted({s for v in results.values() for s in v}, key=lambda s: (not s.startswith("group"), s))
        fig, axes = plt.subplots(1, len(splits), figsize=(6.2 * len(splits), 4.0), sharey=True, squeeze=False)
        labels = ["learned predictor", "plain perplexity (lower is better)", "best single indicator (chosen in hindsight)"]
        colors = ["#1f4e9c", "#e07b00", "#9a9a9a"]
        for ax, split in zip(axes[0], splits):
            x = np.arange(len(targets))
            for k in range(3):
                means, stds = [], []
                for t in targets:
                    r = results[t].get(split)
                    if r is None:
                        means.append(np.nan), stds.append(0)
                        continue
                    if k == 0:
                        m, s = r["predictor"]["accuracy_mean"], r["predictor"]["accuracy_std"]
                    elif k == 1:
                        m, s = ppl_rule(r)
                    else:
                        b = max(r["baselines"].values(), key=lambda v: v["accuracy_mean"])
                        m, s = b["accuracy_mean"], b["accuracy_std"]
                    means.append(m), stds.append(s)
                ax.bar(x + (k - 1) * 0.27, means, 0.27, yerr=stds, color=colors[k], label=labels[k], capsize=2,
                       error_kw={"elinewidth": 0.8})
            ax.axhline(0.5, color="k", ls="--", lw=0.8)
            ax.set_xticks(x, [t.replace("sft/", "") for t in targets], fontsize=8)
            ax.set_ylim(0, 1.05)
            ax.set_title(f"split {split}", fontsize=10)
            ax.set_ylabel("pairwise accuracy on held-out checkpoints", fontsize=8)
        handles, names = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, names, loc="lower center", ncol=3, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        args.png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.png, dpi=110)
        print(f"\nwrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
