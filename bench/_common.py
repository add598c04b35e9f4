"""Shared helpers for bench/predict_pair.py, bench/rank.py and bench/serve.py.

Each benchmark builds what it needs in a temporary directory: a random checkpoint table
(5 numeric features, 2 categorical, 1 label), imported with ``ckptsel import-table`` and a
predictor trained on it (``ckptsel train`` when the MLflow registry is needed, else the
library's ``train(..., register=False)``). Nothing outside the temporary directory is read
or written, except the package itself.

Timings on a shared machine are noisy: every benchmark measures its baseline in the same
run, interleaved with the measured thing, and reports medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = "ft"
MODEL_NAME = "bench"
NUMERIC = [f"f{j}" for j in range(5)]
CATEGORICAL = ["objective", "data_mix"]
ID_COLUMN = "model_id"


def bin_dir() -> Path:
    """The virtual environment's bin directory (the one holding the ``ckptsel`` console script)."""
    here = Path(sys.executable).parent
    if (here / "ckptsel").exists():
        return here
    venv = REPO / ".venv" / "bin"
    if (venv / "ckptsel").exists():
        return venv
    sys.exit(f"cannot find the ckptsel console script next to {sys.executable} or in {venv}; "
             "run with the project's .venv/bin/python")


def script(name: str) -> str:
    return str(bin_dir() / name)


def script_interpreter(path: str) -> str:
    """The interpreter on a console script's shebang line (the benchmark compares against it)."""
    first = Path(path).read_text().splitlines()[0]
    if first.startswith("#!") and "python" in first and " " not in first[2:].strip():
        return first[2:].strip()
    return sys.executable


def clean_env(**extra: str) -> dict:
    """The environment for child processes: no inherited workspace or tracking server."""
    env = {k: v for k, v in os.environ.items() if k not in ("CKPTSEL_HOME", "MLFLOW_TRACKING_URI")}
    env.update(extra)
    return env


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def check_call(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=kw.pop("env", clean_env()), **kw)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


# -- workspace --------------------------------------------------------------------------------
def make_table(path: Path, n_rows: int, n_labelled: int | None = None, seed: int = 0) -> list[str]:
    """A random CSV: id, 5 numeric features (a few missing), 2 categorical, label ``ft`` on the
    first ``n_labelled`` rows (empty cells elsewhere). Returns the ids."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n_labelled = n_rows if n_labelled is None else n_labelled
    ids = [f"ckpt-{i:05d}" for i in range(n_rows)]
    x = rng.normal(size=(n_rows, len(NUMERIC)))
    objective = rng.choice(["clm", "ul2", "span"], size=n_rows)
    data_mix = rng.choice(["web", "code", "books", "mixed"], size=n_rows)
    effect = {"clm": 0.0, "ul2": 0.4, "span": 0.7}
    y = x[:, 0] - 0.5 * x[:, 1] + 0.3 * x[:, 2] * x[:, 3] + np.array([effect[o] for o in objective]) \
        + 0.5 * rng.normal(size=n_rows)
    x[rng.random(x.shape) < 0.02] = np.nan
    lines = [",".join([ID_COLUMN, *NUMERIC, *CATEGORICAL, TARGET])]
    for i in range(n_rows):
        nums = ["" if v != v else f"{v:.6g}" for v in x[i]]
        label = f"{y[i]:.6g}" if i < n_labelled else ""
        lines.append(",".join([ids[i], *nums, objective[i], data_mix[i], label]))
    path.write_text("\n".join(lines) + "\n")
    return ids


def build_workspace(root: Path, *, n_rows: int = 60, n_labelled: int | None = None, register: bool = False,
                    seed: int = 0) -> dict:
    """Generate a table, ``ckptsel import-table`` it into ``root/ws`` and train ``bench``.

    ``register=True`` trains with ``ckptsel train --cv-repeats 0`` (exports and registers in the
    workspace's MLflow, needed by ``ckptsel serve``); otherwise the library's
    ``train(..., register=False)`` only exports ``models/bench/`` (enough for predict-pair/rank)."""
    ws = root / "ws"
    table = root / "table.csv"
    ids = make_table(table, n_rows, n_labelled, seed)
    started = time.perf_counter()
    check_call([script("ckptsel"), "--workspace", str(ws), "import-table", str(table),
                "--id-column", ID_COLUMN, "--labels", TARGET])
    t_import = time.perf_counter() - started
    started = time.perf_counter()
    if register:
        check_call([script("ckptsel"), "--workspace", str(ws), "train", "--target", TARGET,
                    "--name", MODEL_NAME, "--cv-repeats", "0", "--seed", str(seed)])
    else:
        from ckptsel.training import train
        from ckptsel.workspace import Workspace

        train(Workspace.resolve(ws), TARGET, name=MODEL_NAME, alias=None, seed=seed, cv_repeats=0,
              register=False)
    t_train = time.perf_counter() - started
    log(f"workspace {ws}: {n_rows} checkpoints ({n_rows if n_labelled is None else n_labelled} labelled), "
        f"import {t_import:.1f}s, train{' + register' if register else ''} {t_train:.1f}s")
    return {"ws": ws, "ids": ids, "model": MODEL_NAME, "import_s": t_import, "train_s": t_train}


@contextlib.contextmanager
def workdir(keep: bool = False, prefix: str = "ckptsel-bench-"):
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield root
    finally:
        if keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


# -- statistics and output --------------------------------------------------------------------
def median(xs) -> float:
    return float(statistics.median(xs))


def percentile(xs, q: float) -> float:
    """Nearest-rank-with-interpolation percentile (q in 0..100) of a non-empty sequence."""
    xs = sorted(xs)
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object on stdout "
                                                        "(progress goes to stderr)")
    p.add_argument("--keep", action="store_true", help="keep the temporary workspace and print its path")
    p.add_argument("--seed", type=int, default=0)
    return p


def emit(figures: dict, lines: list[str], ratio_line: str, as_json: bool) -> None:
    """Human-readable lines then the final RATIO line, or (``--json``) one JSON object."""
    if as_json:
        json.dump({**figures, "ratio_line": ratio_line}, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        for line in lines:
            print(line)
        print(ratio_line)
    sys.stdout.flush()
