"""The command line as users run it: console scripts in subprocesses against a real
workspace (SQLite store, exported predictor, MLflow registry), checked against numbers
computed here from the table and the exported predictor."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from helpers_tables import (LABELS, best, by_id, check_ok, clean_env, feature_frames, make_rows, run_cli,
                            trained_workspace, worst, write_table)

REASON_KEYS = {"feature", "contribution", "a", "b"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_workspace(tmp_path_factory)


@pytest.fixture(scope="module")
def predictor(trained):
    return trained.predictor()


def in_process_prob(trained, predictor, id_a: str, id_b: str) -> float:
    rows = by_id(trained.rows)
    fa, fb = feature_frames([rows[id_a]], [rows[id_b]], predictor.schema_)
    return float(predictor.predict_proba(fa, fb)[0])


def predict_pair(trained, a: str, b: str, script: str = "predict-pair") -> dict:
    if script == "predict-pair":
        proc = run_cli(a, b, "--workspace", trained.root, "--json", script="predict-pair")
    else:
        proc = run_cli("--workspace", trained.root, "predict-pair", a, b, "--json")
    return json.loads(check_ok(proc).stdout)


def rank(trained, *args: str) -> subprocess.CompletedProcess:
    return check_ok(run_cli("--workspace", trained.root, "rank", *args))


# -- predict-pair --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def best_vs_worst(trained):
    """The same pair both ways: `predict-pair HI LO` and `ckptsel predict-pair LO HI`."""
    hi, lo = best(trained.rows)["model_id"], worst(trained.rows)["model_id"]
    return hi, lo, predict_pair(trained, hi, lo), predict_pair(trained, lo, hi, script="ckptsel")


def test_predict_pair_json_shape(trained, best_vs_worst, predictor):
    rows = by_id(trained.rows)
    for result in best_vs_worst[2:]:
        assert {"a", "b", "prob_a_better", "decision", "reasons"} <= set(result)
        assert 0.0 <= result["prob_a_better"] <= 1.0
        assert len(result["reasons"]) == 3
        for r in result["reasons"]:
            assert set(r) >= REASON_KEYS
            assert r["feature"] in predictor.schema_.names
            # The values shown are the checkpoints' own features, as in the table.
            for side in ("a", "b"):
                want = rows[result[side]][r["feature"]]
                assert r[side] == (want if isinstance(want, str) else float(want))
        contributions = [abs(r["contribution"]) for r in result["reasons"]]
        assert contributions == sorted(contributions, reverse=True)
        assert len({r["feature"] for r in result["reasons"]}) == 3


def test_predict_pair_both_orders_sum_to_one_and_decide_by_probability(trained, best_vs_worst):
    hi, lo, forward, backward = best_vs_worst
    assert (forward["a"], forward["b"]) == (hi, lo) and (backward["a"], backward["b"]) == (lo, hi)
    assert abs(forward["prob_a_better"] + backward["prob_a_better"] - 1.0) < 1e-12
    for result in (forward, backward):
        p = result["prob_a_better"]
        assert result["decision"] == (result["a"] if p > 0.5 else result["b"] if p < 0.5 else "tie")
    # `strong` determines the target perfectly: the best checkpoint wins with confidence.
    assert forward["prob_a_better"] > 0.9
    assert forward["decision"] == backward["decision"] == hi
    assert forward["reasons"][0]["feature"] == "strong"
    assert forward["reasons"][0]["contribution"] > 0 > backward["reasons"][0]["contribution"]


def test_predict_pair_equals_the_exported_predictor_in_process(trained, predictor, best_vs_worst):
    hi, lo, forward, backward = best_vs_worst
    assert forward["prob_a_better"] == pytest.approx(in_process_prob(trained, predictor, hi, lo), abs=1e-12)
    assert backward["prob_a_better"] == pytest.approx(in_process_prob(trained, predictor, lo, hi), abs=1e-12)


def test_predict_pair_by_run_at_step(trained, predictor):
    ra, rb = trained.rows[4], trained.rows[17]
    a_ref, b_ref = f"{ra['run']}@{ra['step']}", f"{rb['run']}@{rb['step']}"
    result = predict_pair(trained, a_ref, b_ref, script="ckptsel")
    assert (result["a"], result["b"]) == (ra["model_id"], rb["model_id"])
    expected = in_process_prob(trained, predictor, ra["model_id"], rb["model_id"])
    assert result["prob_a_better"] == pytest.approx(expected, abs=1e-12)
    better = ra if ra["quality"] > rb["quality"] else rb
    if abs(ra["quality"] - rb["quality"]) >= 10:
        assert result["decision"] == better["model_id"]


@pytest.mark.parametrize("script", ["predict-pair", "ckptsel"])
def test_unknown_checkpoint_exits_2_with_one_line(trained, script):
    known = trained.rows[0]["model_id"]
    args = [known, "no-such-ckpt", "--workspace", trained.root, "--json"]
    proc = run_cli(*args, script="predict-pair") if script == "predict-pair" else \
        run_cli("--workspace", trained.root, "predict-pair", known, "no-such-ckpt", "--json")
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "no-such-ckpt" in lines[0]
    assert json.loads(proc.stdout) == {"error": lines[0].split(": error: ", 1)[1]}  # --json: the error for scripts


def test_predict_pair_cold_start_imports_no_heavy_libraries(trained):
    hi, lo = best(trained.rows)["model_id"], worst(trained.rows)["model_id"]
    code = (
        "import json, sys\n"
        "from ckptsel.cli import predict_pair_main\n"
        f"rc = predict_pair_main([{hi!r}, {lo!r}, '--workspace', {str(trained.root)!r}, '--json'])\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'mlflow') if m in sys.modules]\n"
        "print('RESULT ' + json.dumps({'rc': rc, 'heavy': heavy}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    marker = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert marker, proc.stdout
    result = json.loads(marker[-1][len("RESULT "):])
    assert result == {"rc": 0, "heavy": []}
    printed = json.loads(proc.stdout[: proc.stdout.index("RESULT ")])
    assert printed["prob_a_better"] > 0.9


# -- rank ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ranked(trained):
    return json.loads(rank(trained, "--all", "--json").stdout)


def test_rank_all_is_ordered_by_expected_wins(trained, ranked):
    cands = ranked["candidates"]
    n = len(trained.rows)
    assert len(cands) == n == ranked["n_candidates"]
    assert sorted(c["id"] for c in cands) == sorted(r["model_id"] for r in trained.rows)
    assert [c["rank"] for c in cands] == list(range(1, n + 1))
    wins = [c["expected_wins"] for c in cands]
    assert wins == sorted(wins, reverse=True)
    # P(i > j) + P(j > i) = 1 for every pair, so the expected wins add up to n(n-1)/2.
    assert sum(wins) == pytest.approx(n * (n - 1) / 2, abs=1e-6)
    for c in cands:
        assert c["win_rate"] == pytest.approx(c["expected_wins"] / (n - 1), abs=1e-12)
    rows = by_id(trained.rows)
    for c in cands:
        assert (c["run"], c["step"]) == (rows[c["id"]]["run"], rows[c["id"]]["step"])
    assert cands[0]["id"] == best(trained.rows)["model_id"]
    assert cands[-1]["id"] == worst(trained.rows)["model_id"]


def test_rank_expected_wins_equal_the_sum_of_pair_probabilities(trained, predictor, ranked):
    rows = trained.rows
    for cand in (ranked["candidates"][0], ranked["candidates"][len(rows) // 2]):
        me = by_id(rows)[cand["id"]]
        others = [r for r in rows if r["model_id"] != cand["id"]]
        fa, fb = feature_frames([me] * len(others), others, predictor.schema_)
        # rank scores pairs in float32, predict-pair in float64: allow for that.
        assert cand["expected_wins"] == pytest.approx(float(predictor.predict_proba(fa, fb).sum()), abs=1e-3)


def test_rank_top_3(trained, ranked):
    top = json.loads(rank(trained, "--all", "--top", "3", "--json").stdout)["candidates"]
    assert len(top) == 3
    assert [c["id"] for c in top] == [c["id"] for c in ranked["candidates"][:3]]
    assert [c["rank"] for c in top] == [1, 2, 3]


def test_rank_csv_parses(trained, ranked):
    text = rank(trained, "--all", "--csv").stdout
    table = list(csv.DictReader(io.StringIO(text)))
    assert len(table) == len(trained.rows)
    assert {"id", "rank", "expected_wins", "win_rate"} <= set(table[0])
    for row, cand in zip(table, ranked["candidates"]):
        assert row["id"] == cand["id"] and int(row["rank"]) == cand["rank"]
        assert float(row["expected_wins"]) == pytest.approx(cand["expected_wins"], abs=1e-9)


def test_rank_bradley_terry_puts_the_dominant_checkpoint_first(trained):
    result = json.loads(rank(trained, "--all", "--method", "bradley-terry", "--json").stdout)
    cands = result["candidates"]
    assert result["method"] == "bradley-terry"
    assert cands[0]["id"] == best(trained.rows)["model_id"]
    strengths = [c["bt_log_strength"] for c in cands]
    assert strengths == sorted(strengths, reverse=True)
    assert all(np.isfinite(strengths))


# -- help ----------------------------------------------------------------------------------------

def _subcommands() -> list[list[str]]:
    from ckptsel.cli import build_parser

    out = []
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append([name])
                for sub_action in sub._actions:
                    if isinstance(sub_action, argparse._SubParsersAction):
                        out += [[name, inner] for inner in sub_action.choices]
    return out


def test_help_of_every_command_exits_0():
    commands = _subcommands()
    assert {"import-table", "train", "evaluate", "predict-pair", "rank", "serve"} <= {c[0] for c in commands}
    for args in [[], *commands]:
        proc = run_cli(*args, "--help", timeout=60)
        assert proc.returncode == 0, (args, proc.stderr)
        assert "usage:" in proc.stdout
    proc = run_cli("--help", script="predict-pair", timeout=60)
    assert proc.returncode == 0 and "usage: predict-pair" in proc.stdout


# -- import-table errors -------------------------------------------------------------------------

def _dump(db) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return sorted(line for line in conn.iterdump() if "INSERT INTO" in line
                      and "sqlite_" not in line)
    finally:
        conn.close()


@pytest.mark.parametrize("case", ["missing id column", "duplicate id in the last row"])
def test_import_table_error_exits_2_and_leaves_the_store_unchanged(tmp_path, case):
    rows = make_rows(n=8, seed=3)
    ws = tmp_path / "ws"
    good = write_table(tmp_path / "good.csv", rows)
    check_ok(run_cli("--workspace", ws, "import-table", good, "--id-column", "model_id",
                     "--labels", ",".join(LABELS)))
    before = _dump(ws / "ckptsel.db")
    assert sum("INSERT INTO \"checkpoints\"" in line for line in before) == 8

    new_rows = make_rows(n=12, seed=4)
    for r in new_rows:
        r["model_id"] = "new-" + r["model_id"]
    if case == "duplicate id in the last row":
        new_rows[-1]["model_id"] = new_rows[0]["model_id"]
        id_column = "model_id"
    else:
        id_column = "checkpoint"  # not a column of the table
    bad = write_table(tmp_path / "bad.csv", new_rows)
    proc = run_cli("--workspace", ws, "import-table", bad, "--id-column", id_column,
                   "--labels", ",".join(LABELS))
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert (id_column in lines[0]) if case == "missing id column" else (new_rows[0]["model_id"] in lines[0])
    assert _dump(ws / "ckptsel.db") == before
