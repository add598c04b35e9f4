"""`ckptsel serve`: a real MLflow scoring server on 127.0.0.1, fed real requests.

Answers are compared with the exported predictor run in this process on the same pairs;
bad requests must come back 4xx with a message, never 5xx, and leave the server alive."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from helpers_tables import (best, run_cli, clean_env, console_script, feature_frames, pair_records,
                            trained_workspace, worst)

pytestmark = pytest.mark.slow

STARTUP_LIMIT_S = 60


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, body: bytes | None = None, timeout: float = 30) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def stop(proc: subprocess.Popen) -> None:
    """Stop the server's whole process group (mlflow and the uvicorn it started)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # anything of the group still alive
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        proc.wait(timeout=10)


def wait_for(url: str, proc: subprocess.Popen, log: Path, limit_s: float = STARTUP_LIMIT_S) -> None:
    """Poll ``url`` until it answers 200; fail with the log's tail if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + limit_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[:4]} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if request(url, timeout=2)[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError, socket.timeout, OSError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"no answer from {url} in {limit_s} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_workspace(tmp_path_factory)


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    """`ckptsel serve --name NAME@champion --port P` for the module; yields the base URL."""
    port = free_port()
    log_path = Path(tmp_path_factory.mktemp("serve")) / "serve.log"
    # --workspace goes before the subcommand: `serve` does not accept it after (see the report).
    argv = [*console_script("ckptsel"), "--workspace", str(trained.root), "serve",
            "--name", f"{trained.name}@champion", "--port", str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, env=clean_env(), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(base + "/ping", proc, log_path, STARTUP_LIMIT_S)
        yield base
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def predictor(trained):
    return trained.predictor()


@pytest.fixture(scope="module")
def pairs(trained, predictor):
    """A few pairs: best vs worst both ways, and some others; with the in-process probabilities."""
    rows = trained.rows
    hi, lo = best(rows), worst(rows)
    rows_a = [hi, lo, rows[3], rows[7], rows[11]]
    rows_b = [lo, hi, rows[20], rows[2], rows[11]]
    fa, fb = feature_frames(rows_a, rows_b, predictor.schema_)
    expected = predictor.predict_proba(fa, fb)
    return pair_records(rows_a, rows_b, predictor.schema_), expected


def invoke(server: str, payload) -> tuple[int, str]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return request(server + "/invocations", body)


def served_probs(text: str) -> np.ndarray:
    predictions = json.loads(text)["predictions"]
    return np.array([p["prob_a_better"] for p in predictions])


def split_payload(records: list[dict]) -> dict:
    columns = list(records[0])
    return {"dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in records]}}


# -- good requests ------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["dataframe_split", "dataframe_records", "inputs_records", "inputs_columns"])
def test_invocations_match_the_in_process_predictor(server, pairs, form):
    records, expected = pairs
    payload = {
        "dataframe_split": lambda: split_payload(records),
        "dataframe_records": lambda: {"dataframe_records": records},
        "inputs_records": lambda: {"inputs": records},
        "inputs_columns": lambda: {"inputs": {c: [r[c] for r in records] for c in records[0]}},
    }[form]()
    status, text = invoke(server, payload)
    assert status == 200, text
    got = served_probs(text)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


def test_served_probabilities_are_antisymmetric_and_favour_the_better_checkpoint(server, pairs):
    records, _ = pairs
    status, text = invoke(server, {"dataframe_records": records[:2]})  # best vs worst, then reversed
    assert status == 200, text
    p_hi_lo, p_lo_hi = served_probs(text)
    assert abs(p_hi_lo + p_lo_hi - 1.0) < 1e-12
    assert p_hi_lo > 0.9


# -- bad requests -------------------------------------------------------------------------------

def _with(record: dict, **changes) -> dict:
    out = dict(record)
    for k, v in changes.items():
        out[k.replace("__", ".")] = v
    return out


def _without(record: dict, column: str) -> dict:
    return {k: v for k, v in record.items() if k != column}


BAD = {
    "bad json": (lambda r: b'{"dataframe_records": [', None),
    "not an object": (lambda r: b"[1, 2]", None),
    "missing column": (lambda r: {"dataframe_records": [_without(r, "a.strong")]}, "a.strong"),
    "string in numeric": (lambda r: {"dataframe_records": [_with(r, a__strong="high")]}, "a.strong"),
    "infinity": (lambda r: json.dumps({"dataframe_records": [_with(r, b__weak=float("inf"))]}).encode(),
                 "b.weak"),
    "minus infinity as split": (lambda r: json.dumps(split_payload([_with(r, a__noise=float("-inf"))])).encode(),
                                "a.noise"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_get_4xx_with_a_message_and_the_server_lives_on(server, pairs, case):
    make, column = BAD[case]
    status, text = invoke(server, make(pairs[0][0]))
    assert 400 <= status < 500, f"{status}: {text}"
    message = json.loads(text).get("message", "")
    assert message
    if column:
        assert column in message, message
    if "infinity" in case:
        assert "infinite" in message.lower()
    status, _ = request(server + "/ping")
    assert status == 200


def test_server_still_scores_after_bad_requests(server, pairs):
    records, expected = pairs
    invoke(server, b"{nonsense")
    status, text = invoke(server, {"dataframe_records": records})
    assert status == 200, text
    np.testing.assert_allclose(served_probs(text), expected, rtol=0, atol=1e-9)


# -- binding --------------------------------------------------------------------------------------

def test_serve_binds_loopback_by_default(trained, server):
    from ckptsel.cli import build_parser
    from ckptsel.serving import serve_command
    from ckptsel.workspace import Workspace

    argv, env = serve_command(Workspace(trained.root), f"{trained.name}@champion")
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert f"models:/{trained.name}/1" in argv  # trained once: the champion alias is version 1, here and in MLflow
    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"

    port = int(server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    # Where this machine has a non-loopback address, nothing answers on it.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent by a UDP connect
            address = s.getsockname()[0]
        except OSError:
            address = None
    if address and not address.startswith("127."):
        with pytest.raises(OSError):
            socket.create_connection((address, port), timeout=5).close()


def test_serve_on_a_busy_port_is_one_line(trained, server):
    port = int(server.rsplit(":", 1)[1])
    proc = run_cli("--workspace", trained.root, "serve", "--model", f"{trained.name}@champion", "--port", str(port))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"ckptsel: error: port {port} on 127.0.0.1 is in use by another "
                                                f"process; pass --port N (e.g. --port {port + 1}) or stop the other server"]
    assert "serving" not in proc.stdout + proc.stderr.split("error")[0]
