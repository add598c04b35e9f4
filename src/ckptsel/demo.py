"""``ckptsel demo``: the whole pipeline on the micro zoo, in one command, on a CPU.

1. build the zoo (``ckptsel zoo build --preset micro``): tiny Llama models pretrained here with
   different objectives, learning rates and data mixes, several checkpoints each;
2. pretraining-side indicators of every checkpoint (``configs/indicators/zoo.yaml``);
3. LoRA fine-tuning of every checkpoint on the zoo's SFT tasks (``configs/sft/zoo_*.yaml``):
   the labels;
4. evaluation of the pairwise predictor on held-out checkpoints: leave-one-run-out
   (``group:run``: neighbouring checkpoints of a run never sit on both sides) and random 60/40
   splits (Zeng et al., *Can Pre-training Indicators Reliably Predict Fine-tuning Outcomes of
   LLMs?*, arXiv 2504.12491), next to plain perplexity ("lower is better") and every single
   indicator;
5. training and registering the predictor in MLflow;
6. ``predict-pair`` on two checkpoints and 7. ``rank`` of all of them;
8. the HTML report (``ckptsel report``).

Everything is cached in the workspace (``./ckptsel-demo`` by default): a rerun skips the zoo,
indicators and fine-tuning that are done, re-evaluates, registers a new model version and
rewrites the report.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from typing import Sequence

from ckptsel.errors import CkptselError
from ckptsel.evaluation import plain_perplexity_rules
from ckptsel.workspace import Workspace

DEFAULT_TASKS = ("zoo_domain", "zoo_ending", "zoo_cloze")
SPLITS = ("group:run", "random:0.6")
SPEC = "configs/indicators/zoo.yaml"


def repo_path(*parts: str) -> Path:
    """A file of the source checkout (configs/, data/): the demo runs from an editable install."""
    path = Path(__file__).resolve().parents[2].joinpath(*parts)
    if not path.exists():
        raise CkptselError(f"{path} is missing: the demo needs the source checkout's configs/ and data/; "
                           "install with `pip install -e .` from a clone of the repository")
    return path


def summary_rows(results: dict[str, dict]) -> list[tuple[str, dict[str, dict]]]:
    """Rows of the summary for one target: ``(label, {split: {"accuracy_mean", "accuracy_std"}})``.

    The predictor; plain perplexity (the mean over corpora of the fixed "lower is better" rule,
    or the single corpus); the best single indicator, chosen on the leave-one-run-out split and
    reported on every split (chosen after seeing held-out accuracy, so optimistic)."""
    splits = list(results)
    rows = [("learned predictor", {s: results[s]["predictor"] for s in splits})]
    ppl = {}
    for s in splits:
        rules = results[s].get("fixed_rules", {})
        if rules:
            means = [v["accuracy_mean"] for v in rules.values()]
            stds = [v["accuracy_std"] for v in rules.values()]
            ppl[s] = {"accuracy_mean": sum(means) / len(means), "accuracy_std": sum(stds) / len(stds)}
    if ppl:
        rows.append(("plain perplexity, lower is better", ppl))
    first = results[splits[0]]["baselines"]
    if first:
        best = max(first, key=lambda f: first[f]["accuracy_mean"])
        rows.append((f"best single indicator: {best}", {s: results[s]["baselines"][best] for s in splits
                                                        if best in results[s]["baselines"]}))
    return rows


def format_summary(per_target: dict[str, dict[str, dict]]) -> str:
    lines = []
    for target, results in per_target.items():
        any_result = next(iter(results.values()))
        lines.append(f"{target}  ({any_result['n_checkpoints']} checkpoints; pairwise accuracy on held-out "
                     "checkpoints, mean ± std over splits)")
        rows = summary_rows(results)
        width = max(len(r[0]) for r in rows)
        lines.append("  " + " " * width + "".join(f"  {s:>16}" for s in results))
        for label, vals in rows:
            cells = "".join(f"  {vals[s]['accuracy_mean']:>8.3f} ± {vals[s]['accuracy_std']:.3f}" if s in vals
                            else f"  {'':>16}" for s in results)
            lines.append(f"  {label:<{width}}{cells}")
        lines.append("")
    return "\n".join(lines)


def run_demo(workspace: str | Path = "ckptsel-demo", *, preset: str = "micro", seeds: Sequence[int] = (0,),
             tasks: Sequence[str] = DEFAULT_TASKS, repeats: int = 20, seed: int = 0, report: bool = True) -> int:
    missing = [m for m in ("torch", "transformers", "peft") if importlib.util.find_spec(m) is None]
    if missing:
        raise CkptselError(f"the demo trains models and needs {', '.join(missing)}: install the [lm] extra, "
                           "pip install torch==2.13.0 && pip install -e '.[lm]'")
    from ckptsel.evaluation import evaluate
    from ckptsel.finetune import load_task, run_finetune
    from ckptsel.indicators import run_indicators
    from ckptsel.indicators.spec import load_spec
    from ckptsel.ranking import format_pair, format_rank, predict_pair, rank
    from ckptsel.store import Store
    from ckptsel.tracking import log_evaluation
    from ckptsel.training import group_values, labelled_table, train
    from ckptsel.zoo import build_zoo

    started = time.perf_counter()
    ws = Workspace.resolve(workspace).ensure()
    spec = load_spec(repo_path(SPEC))
    sft_tasks = [load_task(repo_path("configs", "sft", f"{t}.yaml")) for t in tasks]

    def stage(title: str) -> None:
        print(f"\n== {title} ({time.perf_counter() - started:.0f}s)", flush=True)

    stage(f"1/8 build the {preset} zoo in {ws.root / 'zoo'}")
    zoo = build_zoo(preset, ws.root, progress=None)
    print(zoo.describe())
    with Store(ws.db_path) as store:
        ckpts = [store.get_checkpoint(cid) for cid in zoo.checkpoint_ids]

        stage(f"2/8 indicators ({spec.name} spec) for {len(ckpts)} checkpoints")
        print(run_indicators(store, ckpts, spec, progress=None).describe())

        stage(f"3/8 fine-tune every checkpoint on {len(sft_tasks)} task(s), seeds {list(seeds)}")
        for task in sft_tasks:
            rep = run_finetune(store, ckpts, task, workspace=ws.root, seeds=seeds, progress=None)
            print(rep.describe().splitlines()[-1])
        targets = [t.target for t in sft_tasks]
        tables = {t: labelled_table(store, t) for t in targets}

    stage(f"4/8 evaluate the predictor on held-out checkpoints ({', '.join(SPLITS)}; {repeats} random repeats)")
    per_target: dict[str, dict[str, dict]] = {}
    for target, table in tables.items():
        rules = plain_perplexity_rules(table.frame.numeric_names)
        per_target[target] = {}
        for split in SPLITS:
            groups = group_values(table, "run") if split.startswith("group:") else None
            result = evaluate(table.frame, table.y, target=target, split=split, repeats=repeats, seed=seed,
                              groups=groups, fixed_rules=rules, progress=sys.stderr.isatty())
            result["mlflow_run_id"] = log_evaluation(ws, result, {"target": target, "split": split,
                                                                  "repeats": repeats, "seed": seed})
            ws.save_evaluation(result)
            per_target[target][split] = result
    print(format_summary(per_target))

    primary = targets[0]
    model = "zoo-" + tasks[0].replace("_", "-")
    stage(f"5/8 train on every labelled checkpoint and register '{model}' ({primary}) in MLflow")
    trained = train(ws, primary, name=model, alias="champion", seed=seed, cv_repeats=0)
    reg = trained["registry"]
    print(f"registered {reg['model_uri']} (alias champion), run {reg['run_id']}")

    stage("6/8 predict-pair: the last checkpoints of the first two runs")
    last = {}
    for c in ckpts:
        if c.run not in last or (c.step or 0) > (last[c.run].step or 0):
            last[c.run] = c
    a, b = list(last.values())[:2]
    print(f"$ predict-pair {a.id} {b.id} --model {model} --workspace {ws.root}")
    print(format_pair(predict_pair(ws, a.id, b.id, model=model)))

    stage("7/8 rank every checkpoint (top 10)")
    print(f"$ ckptsel rank --all --model {model} --top 10 --workspace {ws.root}")
    print(format_rank(rank(ws, None, model=model, top=10)))

    html = None
    if report:
        stage("8/8 report")
        from ckptsel.report import build_report

        html = build_report(ws, model=model, target=primary)
        print(f"wrote {html}")

    stage("summary: pairwise accuracy on held-out checkpoints")
    print(format_summary(per_target))
    print(f"MLflow: {ws.tracking_uri} (training run {reg['run_id']})")
    print(f"  browse: mlflow ui --backend-store-uri {ws.tracking_uri}")
    print(f"  serve:  ckptsel serve --model {model}@champion --port 5000 --workspace {ws.root}")
    if html:
        print(f"  report: {html}")
    print(f"done in {time.perf_counter() - started:.0f}s")
    return 0
