"""A team on one tracking server: a real ``mlflow server`` (SQLite backend, proxied artifacts)
on loopback; three ckptsel processes in their own workspaces log to it at the same time; then
``ckptsel serve --name NAME@champion`` loads the model by registry alias from that server.

    mlflow server --backend-store-uri sqlite:///<tmp>/team.db --artifacts-destination <tmp>/artifacts \\
                  --host 127.0.0.1 --port P --workers 1
    MLFLOW_TRACKING_URI=http://127.0.0.1:P ckptsel --workspace <ws_k> train|evaluate ...

The served answers are checked against the known order of the table (the best checkpoint
beats the worst) and against the exported predictor run in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess

import numpy as np
import pytest

from helpers_tables import (LABELS, TARGET, best, check_ok, clean_env, console_script, feature_frames, make_rows,
                            pair_records, run_cli, worst, write_table)
from test_serve import free_port, request, wait_for

pytestmark = pytest.mark.slow

MODEL = "teamsel"


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """A real `mlflow server` on a free loopback port, starting (its schema migration takes a while):
    yields ``ready()``, which waits for /health and returns the URI."""
    base = tmp_path_factory.mktemp("team")
    port = free_port()
    log = base / "mlflow-server.log"
    argv = [*console_script("mlflow"), "server", "--backend-store-uri", f"sqlite:///{base / 'team.db'}",
            "--artifacts-destination", str(base / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1"]
    with open(log, "wb") as out:  # no job-execution workers: ckptsel does not use MLflow jobs
        proc = subprocess.Popen(argv, env=clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"

    def ready() -> str:
        wait_for(uri + "/health", proc, log)
        return uri

    try:
        yield ready
    finally:
        kill_group(proc)


def kill_group(proc: subprocess.Popen, grace_s: float = 3) -> None:
    """SIGTERM the process group we started, SIGKILL what is left after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue


def test_three_workers_log_to_one_server_and_serve_loads_by_alias(tracking_server, tmp_path):
    rows = make_rows()
    table = write_table(tmp_path / "zoo.csv", rows)
    first = tmp_path / "ws0"
    check_ok(run_cli("--workspace", first, "import-table", table, "--id-column", "model_id",
                     "--labels", ",".join(LABELS), "--run-column", "run", "--step-column", "step"))
    workspaces = [first]
    for k in (1, 2):  # every worker has its own workspace, with the same store
        (tmp_path / f"ws{k}").mkdir()
        shutil.copy(first / "ckptsel.db", tmp_path / f"ws{k}" / "ckptsel.db")
        workspaces.append(tmp_path / f"ws{k}")

    tracking_server = tracking_server()  # imported the table while the server started
    env = clean_env(MLFLOW_TRACKING_URI=tracking_server)
    jobs = [["train", "--target", TARGET, "--name", MODEL, "--cv-repeats", "0"],
            ["evaluate", "--target", TARGET, "--repeats", "2", "--seed", "1"],
            ["evaluate", "--target", TARGET, "--repeats", "2", "--seed", "2", "--split", "group:run"]]
    procs = [subprocess.Popen([*console_script("ckptsel"), "--workspace", str(ws), *job], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for ws, job in zip(workspaces, jobs)]
    for proc in procs:  # all three run at once
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"{proc.args}\n{out}\n{err}"

    # Every worker's run is in the one server, none in a workspace's own mlflow.db.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_server)
    experiment = client.get_experiment_by_name("ckptsel")
    runs = client.search_runs([experiment.experiment_id])
    commands = sorted(r.data.tags.get("ckptsel.command") for r in runs)
    assert commands == ["evaluate", "evaluate", "train"], commands
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert all(not (ws / "mlflow.db").exists() for ws in workspaces)
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"

    # `ckptsel serve` in a fresh workspace loads NAME@champion through the server's registry.
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        serve = subprocess.Popen([*console_script("ckptsel"), "--workspace", str(tmp_path / "empty"), "serve",
                                  "--name", f"{MODEL}@champion", "--port", str(port)],
                                 env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(base + "/ping", serve, log)
        from ckptsel.predictor import PairwisePredictor

        predictor = PairwisePredictor.load(first / "models" / MODEL / "1")  # the export of version 1
        hi, lo = best(rows), worst(rows)
        rows_a, rows_b = [hi, lo, rows[4]], [lo, hi, rows[9]]
        records = pair_records(rows_a, rows_b, predictor.schema_)
        status, text = request(base + "/invocations", json.dumps({"dataframe_records": records}).encode())
        assert status == 200, text
        got = np.array([p["prob_a_better"] for p in json.loads(text)["predictions"]])
        assert got[0] > 0.9 and got[1] < 0.1  # the best checkpoint beats the worst, both ways round
        np.testing.assert_allclose(got, predictor.predict_proba(*feature_frames(rows_a, rows_b, predictor.schema_)),
                                   rtol=0, atol=1e-9)
    finally:
        kill_group(serve)
    assert f"models:/{MODEL}@champion" in log.read_text()
