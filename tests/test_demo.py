"""End to end: ``ckptsel demo`` on the micro zoo, as a user runs it (a real subprocess).

Checks the outputs exist and their numbers are sane: every zoo checkpoint has every task's
label, every accuracy lies in [0, 1], the registered MLflow model loads and predicts the same
probability as the exported predictor, the report's HTML and images exist; a rerun trains
nothing again (zoo, indicators and adapters untouched).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ckptsel.demo import DEFAULT_TASKS

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "ckptsel"]


def _snapshot(ws: Path) -> dict[str, float]:
    """mtime of every weight file and adapter: what a rerun must not rewrite."""
    files = list((ws / "zoo").rglob("*.safetensors")) + list((ws / "adapters").rglob("*.safetensors"))
    return {str(f): f.stat().st_mtime_ns for f in files}


@pytest.fixture(scope="module")
def demo_ws(tmp_path_factory):
    ws = tmp_path_factory.mktemp("demo") / "ckptsel-demo"
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    env.pop("MLFLOW_TRACKING_URI")
    proc = subprocess.run([*CLI, "demo", "--workspace", str(ws), "--repeats", "5"], cwd=ws.parent, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return ws, proc.stdout, env


def test_every_checkpoint_is_labelled_on_every_task(demo_ws):
    from ckptsel.store import Store

    ws, out, _ = demo_ws
    with Store(ws / "ckptsel.db", create=False) as store:
        ckpts = store.checkpoints()
        runs = {c.run for c in ckpts}
        assert len(runs) >= 4 and all(sum(c.run == r for c in ckpts) >= 3 for r in runs)
        for task in DEFAULT_TASKS:
            targets = [t for t in store.targets() if t.startswith(f"sft/{task}/")]
            assert len(targets) == 1, (task, store.targets())
            labels = store.labels(targets[0])
            assert set(labels) == {c.id for c in ckpts}
            values = np.array(list(labels.values()), dtype=float)
            assert np.isfinite(values).all()
            if targets[0].endswith(("/acc", "/acc_norm", "/exact_match")):
                assert ((values >= 0) & (values <= 1)).all()
            assert len(np.unique(values)) > 1, f"{targets[0]} does not tell checkpoints apart"


def test_saved_evaluations_are_sane(demo_ws):
    ws, out, _ = demo_ws
    results = [json.loads(f.read_text()) for f in (ws / "evaluations").glob("*.json")]
    assert {r["split"] for r in results} >= {"group:run", "random:0.6"}
    for r in results:
        accs = [r["predictor"]["accuracy_mean"]] + [v["accuracy_mean"] for v in r["baselines"].values()]
        accs += [v["accuracy_mean"] for v in r.get("fixed_rules", {}).values()]
        assert all(0.0 <= a <= 1.0 for a in accs)
        assert r["fixed_rules"], "plain perplexity rule missing"
    assert "summary: pairwise accuracy" in out and "learned predictor" in out


def test_registered_model_loads_and_predicts(demo_ws):
    import mlflow
    import pandas as pd

    from ckptsel.predictor import PairwisePredictor
    from ckptsel.store import Store

    ws, _, env = demo_ws
    model_dir = next(d for d in (ws / "models").iterdir() if d.is_dir())
    mlflow.set_tracking_uri(f"sqlite:///{ws / 'mlflow.db'}")
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model_dir.name}@champion")
    from ckptsel import exports
    from ckptsel.workspace import Workspace

    predictor = PairwisePredictor.load(exports.resolve(Workspace(ws), f"{model_dir.name}@champion").directory)
    with Store(ws / "ckptsel.db", create=False) as store:
        frame = store.feature_frame()
    a, b = frame.take([0]), frame.take([len(frame.ids) - 1])
    row = {}
    for side, fr in (("a", a), ("b", b)):
        for j, name in enumerate(fr.numeric_names):
            row[f"{side}.{name}"] = fr.numeric[0, j]
        for j, name in enumerate(fr.categorical_names):
            row[f"{side}.{name}"] = fr.categorical[0, j]
    schema_cols = [c.name for c in pyfunc.metadata.get_input_schema().inputs]
    got = pyfunc.predict(pd.DataFrame([{c: row.get(c) for c in schema_cols}]))
    prob = float(np.asarray(got).ravel()[0]) if not hasattr(got, "iloc") else float(got.iloc[0, 0])
    assert 0.0 <= prob <= 1.0
    assert prob == pytest.approx(float(predictor.predict_proba(a, b)[0]), abs=1e-9)


def test_report_exists(demo_ws):
    ws, _, _ = demo_ws
    html = ws / "report" / "index.html"
    assert html.is_file()
    assert list((ws / "report").glob("*.png"))


def test_rerun_reuses_everything(demo_ws):
    ws, _, env = demo_ws
    before = _snapshot(ws)
    assert before
    proc = subprocess.run([*CLI, "demo", "--workspace", str(ws), "--repeats", "2", "--no-report"], cwd=ws.parent,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _snapshot(ws) == before
    assert "computed 0 indicator(s)" in proc.stdout
    assert "fine-tuned 0 checkpoint(s)" in proc.stdout
