"""MLflow tracking and registry: evaluation runs, training runs, the registered pyfunc model.

The tracking store is the workspace's ``mlflow.db`` (SQLite) with artifacts under
``mlartifacts/``, unless ``$MLFLOW_TRACKING_URI`` names another (a team server).
"""

from __future__ import annotations

import json
import os
import re
from importlib.metadata import version
from pathlib import Path


from ckptsel.store import FeatureFrame
from ckptsel.workspace import Workspace

EXPERIMENT = "ckptsel"


def configure(ws: Workspace, experiment: str = EXPERIMENT):
    """Point MLflow at the workspace and return the experiment (created on first use)."""
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    ws.ensure()
    mlflow.set_tracking_uri(ws.tracking_uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        from mlflow.exceptions import MlflowException

        location = ws.artifacts_dir.as_uri() if ws.tracking_uri.startswith("sqlite:") else None
        try:
            mlflow.create_experiment(experiment, artifact_location=location)
        except MlflowException as e:  # another worker on a shared server created it first
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    return mlflow.set_experiment(experiment)


def metric_key(text: str) -> str:
    """MLflow metric keys allow letters, digits, '_', '-', '.', ' ', '/'."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", text)


def _log_result_metrics(result: dict, prefix: str = "") -> None:
    import mlflow

    metrics = {f"{prefix}accuracy_mean": result["predictor"]["accuracy_mean"],
               f"{prefix}accuracy_std": result["predictor"]["accuracy_std"]}
    for f, v in result["baselines"].items():
        metrics[metric_key(f"{prefix}baseline/{f}/accuracy_mean")] = v["accuracy_mean"]
    for q in result["accuracy_by_gap_quartile"]:
        if q["accuracy"] is not None:
            metrics[f"{prefix}accuracy_gap_q{q['quartile']}"] = q["accuracy"]
    mlflow.log_metrics(metrics)


def log_evaluation(ws: Workspace, result: dict, params: dict) -> str:
    """One MLflow run per `ckptsel evaluate`; returns the run id."""
    import mlflow

    configure(ws)
    with mlflow.start_run(run_name=f"evaluate {result['target']} {result['split']}") as run:
        mlflow.set_tag("ckptsel.command", "evaluate")
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        _log_result_metrics(result)
        mlflow.log_dict(result, "evaluation.json")
    return run.info.run_id


def input_example(frame: FeatureFrame, schema, n: int = 2):
    """A few real pairs from the training table, in the request format (a.<f>, b.<f>)."""
    import pandas as pd

    rows = []
    for r in range(min(n, len(frame) - 1)):
        a, b = frame.as_dict(r), frame.as_dict(r + 1)
        rows.append({**{f"a.{f}": a[f] for f in schema.names}, **{f"b.{f}": b[f] for f in schema.names}})
    df = pd.DataFrame(rows)
    for f in schema.numeric:
        for side in ("a", "b"):
            df[f"{side}.{f}"] = df[f"{side}.{f}"].astype("float64")
    return df


def signature_for(schema):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = [ColSpec("double" if f in schema.numeric else "string", f"{side}.{f}")
              for side in ("a", "b") for f in schema.names]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([ColSpec("double", "prob_a_better")]))


def scoring_requirements() -> list[str]:
    """What scoring needs, pinned to this environment; no torch, transformers or peft."""
    return [f"{p}=={version(p)}" for p in ("mlflow", "lightgbm", "numpy", "pandas", "scikit-learn", "scipy")]


def importance_plot(importance: dict[str, float], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = list(importance.items())[:20][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(items) + 1.2))
    ax.barh([k for k, _ in items], [v for _, v in items], color="#4c72b0")
    ax.set_xlabel("total gain (summed over the feature's pair columns)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_training(ws: Workspace, *, predictor, frame: FeatureFrame, target: str, name: str,
                 alias: str | None, export_dir: Path, cv_result: dict | None) -> dict:
    """Log params, CV metrics, importance, signature and input example; register the pyfunc
    model under ``name`` and point ``alias`` at the new version. Returns registry facts."""
    import tempfile

    import mlflow
    from mlflow import MlflowClient

    import ckptsel

    configure(ws)
    schema = predictor.schema_
    with mlflow.start_run(run_name=f"train {name} ({target})") as run:
        mlflow.set_tag("ckptsel.command", "train")
        mlflow.log_params({"target": target, "n_checkpoints": len(frame), "n_pairs": predictor.n_train_pairs_,
                           "features": ",".join(schema.names)[:500],
                           **{f"lgbm.{k}": v for k, v in predictor.get_params().items()}})
        if cv_result:
            _log_result_metrics(cv_result, prefix="cv_")
            mlflow.log_dict(cv_result, "cv_evaluation.json")
        importance = predictor.feature_importance()
        mlflow.log_dict(importance, "feature_importance.json")
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(importance_plot(importance, Path(tmp) / "feature_importance.png",
                                                    f"{name}: feature importance ({target})")))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(ckptsel.__file__).parent / "mlflow_entry.py"),
            artifacts={"predictor": str(export_dir)},
            code_paths=[str(Path(ckptsel.__file__).parent)],
            signature=signature_for(schema),
            input_example=input_example(frame, schema),
            pip_requirements=scoring_requirements(),
            registered_model_name=name,
        )
    client = MlflowClient()
    model_version = str(info.registered_model_version)
    if alias:
        client.set_registered_model_alias(name, alias, model_version)
    facts = {"tracking_uri": mlflow.get_tracking_uri(), "run_id": run.info.run_id,
             "model_uri": f"models:/{name}/{model_version}", "version": model_version, "alias": alias}
    (export_dir / "registry.json").write_text(json.dumps(facts, indent=2))
    return facts
