"""``ckptsel demo``: the whole predictor pipeline on an example table, in one command.

import-table -> evaluate (random 60/40 splits, MLflow run) -> train + register (MLflow) ->
predict-pair -> rank. The table is generated deterministically by ``ckptsel.synthetic``
(50 checkpoints shaped like Zeng et al.'s study, arXiv 2504.12491). A rerun reuses the
workspace: the table is reimported (same values), the model retrained and registered as a
new version.
"""

from __future__ import annotations

import time
from pathlib import Path

from ckptsel.workspace import Workspace

TARGET = "ft_task1"
MODEL = "demo"


def run_demo(workspace: str | Path = "ckptsel-demo", seed: int = 0, repeats: int = 20) -> int:
    from ckptsel.evaluation import evaluate, format_result
    from ckptsel.ranking import format_pair, format_rank, predict_pair, rank
    from ckptsel.store import Store
    from ckptsel.synthetic import CONFIGS, OUTCOMES, make_table
    from ckptsel.tables import import_table
    from ckptsel.tracking import log_evaluation
    from ckptsel.training import labelled_table, train

    started = time.perf_counter()
    ws = Workspace.resolve(workspace).ensure()
    table_path = ws.root / "example_table.csv"
    if not table_path.exists():
        make_table(seed).to_csv(table_path, index=False)

    def step(title: str) -> None:
        print(f"\n== {title} ({time.perf_counter() - started:.1f}s)", flush=True)

    step(f"1. import {table_path.name}: 50 checkpoints, 5 indicators, {len(CONFIGS)} config columns, "
         f"{len(OUTCOMES)} fine-tuning outcomes")
    with Store(ws.db_path) as store:
        print(import_table(store, table_path, id_column="model_id", labels=OUTCOMES).describe())
        table = labelled_table(store, TARGET)

    step(f"2. evaluate on held-out checkpoints: {TARGET}, random:0.6 x {repeats}")
    result = evaluate(table.frame, table.y, target=TARGET, split="random:0.6", repeats=repeats, seed=seed,
                      progress=True)
    run_id = log_evaluation(ws, result, {"target": TARGET, "split": "random:0.6", "repeats": repeats, "seed": seed})
    print(format_result(result))

    step(f"3. train on all labelled checkpoints and register '{MODEL}' in MLflow")
    trained = train(ws, TARGET, name=MODEL, alias="champion", seed=seed, cv_repeats=5)
    reg = trained["registry"]
    print(f"registered {reg['model_uri']} (alias champion), run {reg['run_id']}")

    step("4. predict-pair on two checkpoints")
    a, b = table.frame.ids[0], table.frame.ids[1]
    print(f"$ predict-pair {a} {b} --workspace {ws.root}")
    print(format_pair(predict_pair(ws, a, b, model=MODEL)))

    step("5. rank every checkpoint (top 10)")
    print(f"$ ckptsel rank --all --top 10 --workspace {ws.root}")
    print(format_rank(rank(ws, None, model=MODEL, top=10)))

    best_name, best = max(result["baselines"].items(), key=lambda kv: kv[1]["accuracy_mean"])
    ppl = result["baselines"].get("inv_clm_ppl")
    step("summary: pairwise accuracy on held-out checkpoints")
    rows = [("learned predictor", result["predictor"]), (f"best single indicator ({best_name})", best)]
    if ppl:
        rows.append(("plain perplexity (inv_clm_ppl)", ppl))
    for name, v in rows:
        print(f"  {name:<40} {v['accuracy_mean']:.3f} ± {v['accuracy_std']:.3f}")
    print(f"\nMLflow: {ws.tracking_uri} (evaluation run {run_id}, training run {reg['run_id']})")
    print(f"  browse: mlflow ui --backend-store-uri {ws.tracking_uri}")
    print(f"  serve:  ckptsel --workspace {ws.root} serve --name {MODEL}@champion --port 5000")
    print(f"done in {time.perf_counter() - started:.1f}s")
    return 0
