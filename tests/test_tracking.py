"""MLflow tracking and registry, end to end: `ckptsel train` and `ckptsel evaluate` run as
subprocesses against a real SQLite tracking store in the workspace, then the runs, the
registered model and the pyfunc are inspected in-process with MLflow's own client."""

from __future__ import annotations

import json
import math
import re
import sys
from itertools import permutations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers_tables import (CATEGORICAL, FOREIGN_ENV, LABELS, NUMERIC, TARGET, best, check_ok,
                            feature_frames, pair_records, run_cli, trained_workspace, worst)

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The shared trained workspace, with this process's MLflow pointed at its mlflow.db for the
    module (and pointed back, with sys.path restored, afterwards)."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    t = trained_workspace(tmp_path_factory)
    saved_path = list(sys.path)
    saved_uri = getattr(tracking_utils, "_tracking_uri", None)
    with pytest.MonkeyPatch.context() as mp:
        for var in FOREIGN_ENV:
            mp.delenv(var, raising=False)
        mlflow.set_tracking_uri(t.tracking_uri)
        try:
            yield t
        finally:
            mlflow.set_tracking_uri(saved_uri)
            sys.path[:] = saved_path


@pytest.fixture(scope="module")
def client(trained):
    return MlflowClient(tracking_uri=trained.tracking_uri, registry_uri=trained.tracking_uri)


@pytest.fixture(scope="module")
def champion(trained, client):
    return client.get_model_version_by_alias(trained.name, "champion")


@pytest.fixture(scope="module")
def schema(trained):
    return trained.predictor().schema_


@pytest.fixture(scope="module")
def pyfunc(trained, champion):
    return mlflow.pyfunc.load_model(f"models:/{trained.name}@champion")


@pytest.fixture(scope="module")
def all_pairs(trained, schema):
    """Every ordered pair of table rows, as (rows_a, rows_b, request DataFrame)."""
    pairs = list(permutations(trained.rows, 2))
    rows_a, rows_b = [p[0] for p in pairs], [p[1] for p in pairs]
    df = pd.DataFrame(pair_records(rows_a, rows_b, schema))
    return rows_a, rows_b, df


# -- the registry -----------------------------------------------------------------------------

def test_train_registers_a_version_with_alias_champion(trained, client, champion):
    assert champion.name == trained.name
    assert str(champion.version) == "1"  # the workspace was trained once
    assert champion.run_id
    aliases = client.get_registered_model(trained.name).aliases
    assert {k: str(v) for k, v in aliases.items()} == {"champion": "1"}
    assert (trained.root / "mlflow.db").is_file()
    registry = json.loads((trained.model_dir / "registry.json").read_text())
    assert registry["version"] == str(champion.version) and registry["run_id"] == champion.run_id


def test_training_run_has_params_cv_metrics_and_importance_plot(trained, client, champion, schema, tmp_path):
    run = client.get_run(champion.run_id)
    params, metrics = run.data.params, run.data.metrics
    assert run.data.tags.get("ckptsel.command") == "train"
    # Independent counts: every target value in the table is distinct, so every ordered pair counts.
    n = len(trained.rows)
    assert len({r[TARGET] for r in trained.rows}) == n
    assert params["target"] == TARGET
    assert params["n_checkpoints"] == str(n)
    assert params["n_pairs"] == str(n * (n - 1))
    features = set(params["features"].split(","))
    assert set(NUMERIC) | set(CATEGORICAL) <= features
    assert not features & ({"model_id", "run"} | set(LABELS)), "ids, runs and labels are never features"
    assert features == set(schema.names)
    assert any(k.startswith("lgbm.") for k in params)

    assert 0.0 <= metrics["cv_accuracy_mean"] <= 1.0
    assert metrics["cv_accuracy_std"] >= 0.0
    # `strong` orders the target perfectly (no ties), so its single-feature baseline is right on
    # every held-out pair of every repeat.
    assert metrics["cv_baseline/strong/accuracy_mean"] == 1.0
    for f in NUMERIC:
        assert 0.0 <= metrics[f"cv_baseline/{f}/accuracy_mean"] <= 1.0

    artifacts = {a.path for a in client.list_artifacts(champion.run_id)}
    assert "feature_importance.png" in artifacts
    png = client.download_artifacts(champion.run_id, "feature_importance.png", str(tmp_path))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_logged_model_has_pair_signature_input_example_and_light_requirements(trained, schema, tmp_path):
    from mlflow.models import Model

    local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{trained.name}@champion",
                                                dst_path=str(tmp_path))
    model = Model.load(local)
    expected = {f"{side}.{f}" for side in ("a", "b") for f in schema.names}
    assert expected >= {f"{side}.{f}" for side in ("a", "b") for f in (*NUMERIC, *CATEGORICAL)}

    inputs = model.signature.inputs
    assert set(inputs.input_names()) == expected
    types = {spec.name: spec.type.name for spec in inputs.inputs}
    for side in ("a", "b"):
        for f in schema.numeric:
            assert types[f"{side}.{f}"] == "double"
        for c in schema.categorical:
            assert types[f"{side}.{c}"] == "string"
    assert model.signature.outputs.input_names() == ["prob_a_better"]

    example = model.load_input_example(local)
    assert isinstance(example, pd.DataFrame) and len(example) >= 1
    assert set(example.columns) == expected
    # Each side of each example row is a real checkpoint of the table.
    table = [{f: r[f] for f in schema.names} for r in trained.rows]
    for _, row in example.iterrows():
        for side in ("a", "b"):
            values = {f: row[f"{side}.{f}"] for f in schema.names}
            assert any(all((float(values[f]) == float(t[f])) if f in schema.numeric else values[f] == t[f]
                           for f in schema.names) for t in table), values

    requirements = Path(local) / "requirements.txt"
    names = set()
    for line in requirements.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    assert {"mlflow", "lightgbm"} <= names
    assert not names & {"torch", "transformers", "peft"}, names


# -- the pyfunc ---------------------------------------------------------------------------------

def test_pyfunc_from_registry_matches_the_exported_predictor(trained, pyfunc, all_pairs, schema):
    rows_a, rows_b, df = all_pairs
    got = pyfunc.predict(df)
    assert list(got.columns) == ["prob_a_better"] and len(got) == len(df)
    prob = got["prob_a_better"].to_numpy()

    fa, fb = feature_frames(rows_a, rows_b, schema)
    expected = trained.predictor().predict_proba(fa, fb)
    np.testing.assert_allclose(prob, expected, rtol=0, atol=1e-12)

    # Antisymmetry, from the served numbers alone: P(i > j) + P(j > i) = 1.
    index = {(a["model_id"], b["model_id"]): k for k, (a, b) in enumerate(zip(rows_a, rows_b))}
    for (i, j), k in index.items():
        assert math.isclose(prob[k] + prob[index[(j, i)]], 1.0, abs_tol=1e-12)
    # `strong` determines the target: the best checkpoint beats the worst with high confidence.
    hi, lo = best(trained.rows)["model_id"], worst(trained.rows)["model_id"]
    assert prob[index[(hi, lo)]] > 0.9


def test_pyfunc_refuses_a_missing_column_naming_it(pyfunc, all_pairs):
    df = all_pairs[2].head(3).drop(columns=["a.strong"])
    with pytest.raises(MlflowException, match=r"a\.strong"):
        pyfunc.predict(df)


def test_pyfunc_ignores_extra_columns_before_the_model_sees_them(pyfunc, all_pairs):
    # MLflow's schema enforcement drops undeclared columns with a warning: expected behaviour.
    df = all_pairs[2].head(3)
    got = pyfunc.predict(df.assign(**{"c.extra": 1.0}))["prob_a_better"].to_numpy()
    np.testing.assert_array_equal(got, pyfunc.predict(df)["prob_a_better"].to_numpy())


def test_unwrapped_python_model_refuses_extra_and_missing_columns(pyfunc, all_pairs, trained, schema):
    model = pyfunc.unwrap_python_model()
    df = all_pairs[2].head(3)

    with pytest.raises(MlflowException) as err:
        model.predict(None, df.assign(**{"c.extra": 1.0, "zz_unknown": "x"}))
    assert "c.extra" in str(err.value) and "zz_unknown" in str(err.value)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"

    with pytest.raises(MlflowException, match=r"b\.mix"):
        model.predict(None, df.drop(columns=["b.mix"]))

    # And with the right columns it gives the exported predictor's numbers.
    rows_a, rows_b = all_pairs[0][:3], all_pairs[1][:3]
    fa, fb = feature_frames(rows_a, rows_b, schema)
    np.testing.assert_allclose(model.predict(None, df)["prob_a_better"].to_numpy(),
                               trained.predictor().predict_proba(fa, fb), rtol=0, atol=1e-12)


# -- evaluate ---------------------------------------------------------------------------------

def test_evaluate_logs_an_mlflow_run(trained, client):
    proc = check_ok(run_cli("--workspace", trained.root, "evaluate", "--target", TARGET, "--repeats", "3",
                            "--json"))
    result = json.loads(proc.stdout)
    n = len(trained.rows)
    n_test = n - round(0.6 * n)  # the default split is random:0.6
    assert result["repeats"] == 3
    assert result["pairs_per_repeat"] == n_test * (n_test - 1) // 2
    assert result["baselines"]["strong"]["accuracy_mean"] == 1.0

    run = client.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "ckptsel"
    assert run.data.tags.get("ckptsel.command") == "evaluate"
    assert run.data.params["target"] == TARGET and run.data.params["repeats"] == "3"
    metrics = run.data.metrics
    assert metrics["accuracy_mean"] == pytest.approx(result["predictor"]["accuracy_mean"], abs=1e-12)
    assert metrics["accuracy_std"] == pytest.approx(result["predictor"]["accuracy_std"], abs=1e-12)
    assert metrics["baseline/strong/accuracy_mean"] == 1.0
    assert "evaluation.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
