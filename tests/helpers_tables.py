"""A small deterministic checkpoint table, and one trained workspace shared by the
end-to-end test modules (test_cli, test_serve, test_tracking).

The table has 30 checkpoints spread over 3 runs, 3 numeric features, 1 categorical
feature and 2 label columns. The target ``ft_good`` is a strictly increasing function of
the feature ``strong`` alone, so the ordering every test expects is known without asking
the code under test: the checkpoint with the largest ``strong`` is the best one.
Quality is a fixed permutation of the row order, so neither the id, the run nor the step
carries it.
"""

from __future__ import annotations

import csv
import os
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

N_CHECKPOINTS = 30
NUMERIC = ("strong", "weak", "noise")
CATEGORICAL = ("mix",)
LABELS = ("ft_good", "ft_other")
TARGET = "ft_good"
MODEL_NAME = "goodsel"
COLUMNS = ("model_id", "run", "step", *NUMERIC, *CATEGORICAL, *LABELS)
# Environment variables that would point a subprocess at another workspace or MLflow server.
FOREIGN_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "CKPTSEL_HOME", "MLFLOW_EXPERIMENT_NAME",
               "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")


def make_rows(n: int = N_CHECKPOINTS, seed: int = 0) -> list[dict]:
    """Rows of the table; ``quality`` (0..n-1, higher is better) is kept for the tests, not written."""
    rng = random.Random(seed)
    quality = list(range(n))
    rng.shuffle(quality)
    rows = []
    for i in range(n):
        q = quality[i]
        rows.append({
            "model_id": f"ck{i:02d}",
            "run": f"run{i % 3}",
            "step": 1000 * (i // 3 + 1),
            "strong": 0.25 + 0.125 * q,                       # exact binary fractions: 0.25 .. 3.875
            "weak": round(q / n + rng.gauss(0.0, 0.6), 6),
            "noise": round(rng.gauss(0.0, 1.0), 6),
            "mix": ("web", "code", "books")[rng.randrange(3)],
            "ft_good": 40.0 + 1.5 * q,                        # strictly increasing in strong alone
            "ft_other": round(rng.uniform(0.0, 1.0), 4),
            "quality": q,
        })
    return rows


def write_table(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in r.items()})
    return path


def best(rows: list[dict]) -> dict:
    return max(rows, key=lambda r: r["quality"])


def worst(rows: list[dict]) -> dict:
    return min(rows, key=lambda r: r["quality"])


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["model_id"]: r for r in rows}


def clean_env(**extra: str) -> dict:
    """This process's environment without anything pointing at another MLflow or workspace."""
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    env.update(extra)
    return env


def console_script(name: str) -> list[str]:
    """argv prefix of an installed console script (``ckptsel``, ``predict-pair``)."""
    script = Path(sys.executable).with_name(name)
    if script.exists():
        return [str(script)]
    func = {"ckptsel": "main", "predict-pair": "predict_pair_main"}[name]
    return [sys.executable, "-c", f"import sys; from ckptsel.cli import {func}; sys.exit({func}())"]


def run_cli(*args: str, script: str = "ckptsel", timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*console_script(script), *map(str, args)], env=clean_env(), capture_output=True,
                          text=True, timeout=timeout)


def check_ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def feature_frames(rows_a: list[dict], rows_b: list[dict], schema):
    """Row-aligned FeatureFrames for sides A and B, built straight from the table rows."""
    from ckptsel.store import FeatureFrame

    def frame(rows, side):
        num = np.array([[float(r[f]) for f in schema.numeric] for r in rows], dtype=np.float64)
        num = num.reshape(len(rows), len(schema.numeric))
        cat = np.empty((len(rows), len(schema.categorical)), dtype=object)
        for j, c in enumerate(schema.categorical):
            cat[:, j] = [r[c] for r in rows]
        return FeatureFrame([f"{side}{i}" for i in range(len(rows))], list(schema.numeric), num,
                            list(schema.categorical), cat)

    return frame(rows_a, "a"), frame(rows_b, "b")


def pair_records(rows_a: list[dict], rows_b: list[dict], schema) -> list[dict]:
    """Request rows ``{"a.<f>": ..., "b.<f>": ...}`` for row-aligned pairs, numbers as floats."""
    out = []
    for ra, rb in zip(rows_a, rows_b):
        rec = {}
        for side, r in (("a", ra), ("b", rb)):
            rec.update({f"{side}.{f}": float(r[f]) for f in schema.numeric})
            rec.update({f"{side}.{c}": r[c] for c in schema.categorical})
        out.append(rec)
    return out


@dataclass
class Trained:
    root: Path
    table: Path
    rows: list[dict]
    name: str = MODEL_NAME
    target: str = TARGET
    train_stdout: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def model_dir(self) -> Path:
        """The export the model's name means (models/<name>/<version>/)."""
        from ckptsel import exports
        from ckptsel.workspace import Workspace

        return exports.resolve(Workspace(self.root), self.name).directory

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    def predictor(self):
        from ckptsel.predictor import PairwisePredictor

        return PairwisePredictor.load(self.model_dir)


_SHARED: dict[str, Trained] = {}


def trained_workspace(tmp_path_factory) -> Trained:
    """Import the table and train once per test process; every module reuses the workspace
    read-only (MLflow runs may be added, the store and the model are never changed)."""
    if "ws" not in _SHARED:
        base = tmp_path_factory.mktemp("shared")
        rows = make_rows()
        table = write_table(base / "zoo.csv", rows)
        root = base / "ws"
        check_ok(run_cli("--workspace", root, "import-table", table, "--id-column", "model_id",
                         "--labels", ",".join(LABELS), "--run-column", "run", "--step-column", "step"))
        proc = check_ok(run_cli("--workspace", root, "train", "--target", TARGET, "--name", MODEL_NAME,
                                "--cv-repeats", "2"))
        _SHARED["ws"] = Trained(root=root, table=table, rows=rows, train_stdout=proc.stdout)
    return _SHARED["ws"]
