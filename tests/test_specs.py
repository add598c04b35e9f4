"""A number means one thing when it is read: values of two specs (or two dtypes) never mix.

The store holds one feature of 12 checkpoints under spec S1 (float32), and later a second spec
S2 (bfloat16) gives checkpoint A other values. A model trained on S1 must answer exactly as before;
a checkpoint with S2 values only is refused in one line naming the feature, S1 and the command.
Real SQLite store, real `ckptsel` processes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ckptsel.store import Checkpoint, Store
from helpers_tables import run_cli

S1, S2, LABEL = "s1" + "0" * 14, "s2" + "0" * 14, "sft/t/acc"
N = 12


def _put(store, fp, spec, dtype, bpb, mc):
    store.put_spec(spec, kind="indicator", name=f"spec-{spec[:2]}", dtype=dtype,
                   command=f"ckptsel indicators {{ckpt}} --spec /specs/{spec[:2]}.yaml --dtype {dtype}")
    store.put_features(fp, {"ppl/x/bits_per_byte": bpb, "kshot/y/acc": mc}, spec_hash=spec)


@pytest.fixture
def ws(tmp_path):
    rng = np.random.default_rng(0)
    with Store(tmp_path / "ckptsel.db") as store, store.transaction():
        for i in range(N):
            store.upsert_checkpoint(Checkpoint(f"c{i}", None, f"run{i % 3}", i, f"fp{i}"))
            _put(store, f"fp{i}", S1, "float32", 2.0 - 0.05 * i + 0.01 * rng.standard_normal(), 0.3 + 0.02 * i)
            store.put_spec("task0", kind="sft", name="t (seeds 0)")
            store.put_label(f"fp{i}", LABEL, 0.5 + 0.01 * i + 0.003 * rng.standard_normal(), spec_hash="task0")
    return tmp_path


def cli(ws, *args):
    return run_cli("--workspace", ws, *args)


def test_a_second_spec_never_moves_a_trained_models_answer(ws):
    assert cli(ws, "train", "--target", LABEL, "--name", "m", "--cv-repeats", "0").returncode == 0
    first = json.loads(cli(ws, "predict-pair", "c3", "c8", "--json").stdout)
    rank_first = json.loads(cli(ws, "rank", "--all", "--json").stdout)
    with Store(ws / "ckptsel.db") as store, store.transaction():  # a second spec, in bf16, on c3 only
        _put(store, "fp3", S2, "bfloat16", 9.0, 0.99)
    second = json.loads(cli(ws, "predict-pair", "c3", "c8", "--json").stdout)
    assert second["prob_a_better"] == first["prob_a_better"]  # exactly: the model reads S1 only
    assert json.loads(cli(ws, "rank", "--all", "--json").stdout)["candidates"] == rank_first["candidates"]
    schema = json.loads((ws / "models/m/1/schema.json").read_text())
    assert schema["schema"]["specs"] == {"ppl/x/bits_per_byte": S1, "kshot/y/acc": S1}
    assert schema["label_spec"] == "task0" and schema["spec_info"][S1]["dtype"] == "float32"


def test_values_under_another_spec_only_are_refused_in_one_line(ws):
    assert cli(ws, "train", "--target", LABEL, "--name", "m", "--cv-repeats", "0").returncode == 0
    with Store(ws / "ckptsel.db") as store, store.transaction():
        store.upsert_checkpoint(Checkpoint("new", None, "run9", 1, "fpnew"))
        _put(store, "fpnew", S2, "bfloat16", 1.0, 0.5)
    proc = cli(ws, "predict-pair", "new", "c1")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    for part in ("'new'", "kshot/y/acc", S1, "spec-s1", "float32", S2,
                 "ckptsel indicators new --spec /specs/s1.yaml --dtype float32"):
        assert part in line, part
    # rank degrades: the others are ranked, `new` is listed with the command; --strict refuses
    ranked = json.loads(cli(ws, "rank", "--all", "--json").stdout)
    assert len(ranked["candidates"]) == N and [s["id"] for s in ranked["skipped"]] == ["new"]
    strict = cli(ws, "rank", "--all", "--strict", "--json")
    assert strict.returncode == 2 and "'new'" in json.loads(strict.stdout)["error"]


def test_training_reads_the_spec_most_checkpoints_have_and_says_so(ws):
    with Store(ws / "ckptsel.db") as store, store.transaction():
        _put(store, "fp3", S2, "bfloat16", 9.0, 0.99)  # newer, but on one checkpoint only
        store.put_label("fp3", LABEL, 100.0, spec_hash="task1")  # another task spec on one checkpoint
    proc = cli(ws, "train", "--target", LABEL, "--name", "m", "--cv-repeats", "0", "--json")
    out = json.loads(proc.stdout)
    assert out["feature_specs"] == {"ppl/x/bits_per_byte": S1, "kshot/y/acc": S1} and out["label_spec"] == "task0"
    assert len(out["notes"]) == 3 and all("under 2 specs" in n for n in out["notes"])
    with Store(ws / "ckptsel.db") as store:
        frame = store.feature_frame()
        assert frame.column("kshot/y/acc")[frame.ids.index("c3")] == pytest.approx(0.3 + 0.02 * 3)  # S1's value, not S2's 0.99
        assert frame.spec_choices["kshot/y/acc"] == {S1: N, S2: 1}
        assert store.labels(LABEL)["c3"] < 1 and store.labels(LABEL, spec="task1") == {"c3": 100.0}


def test_features_show_lists_each_value_with_its_spec(ws):
    with Store(ws / "ckptsel.db") as store, store.transaction():
        _put(store, "fp3", S2, "bfloat16", 9.0, 0.99)
    shown = json.loads(cli(ws, "features", "show", "c3", "--json").stdout)
    assert (shown["id"], shown["fingerprint"]) == ("c3", "fp3")
    got = {(v["name"], v["spec"]): v["value"] for v in shown["features"]}
    assert got[("kshot/y/acc", S2)] == 0.99 and got[("kshot/y/acc", S1)] == pytest.approx(0.36)
    assert {v["dtype"] for v in shown["features"]} == {"float32", "bfloat16"}
    only = json.loads(cli(ws, "features", "show", "c3", "--spec", "s2", "--json").stdout)["features"]
    assert {(v["name"], v["value"]) for v in only} == {("ppl/x/bits_per_byte", 9.0), ("kshot/y/acc", 0.99)}
    text = cli(ws, "features", "show", "c3").stdout
    assert "several specs" in text and S2 in text
    bad = cli(ws, "features", "show", "c3", "--spec", "nosuch")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_name_alias_and_version_mean_one_model_everywhere(ws):
    from ckptsel import exports
    from ckptsel.serving import model_uri
    from ckptsel.workspace import Workspace

    assert cli(ws, "train", "--target", LABEL, "--name", "m", "--cv-repeats", "0").returncode == 0
    assert cli(ws, "train", "--target", LABEL, "--name", "m", "--cv-repeats", "0", "--seed", "1",
               "--alias", "").returncode == 0  # version 2, champion stays on 1
    w = Workspace(ws)
    assert [exports.resolve(w, r).version for r in ("m", "m@champion", "m/1", "m/2")] == ["1", "1", "1", "2"]
    assert model_uri(w, "m") == model_uri(w, "m@champion") == "models:/m/1"
    p = {r: json.loads(cli(ws, "predict-pair", "c2", "c9", "--model", r, "--json").stdout) for r in ("m", "m/1", "m/2")}
    assert p["m"]["version"] == p["m/1"]["version"] == "1" and p["m/2"]["version"] == "2"
    assert p["m"]["prob_a_better"] == p["m/1"]["prob_a_better"] != p["m/2"]["prob_a_better"]
    assert json.loads((ws / "models/m/2/registry.json").read_text())["version"] == "2"
    bad = cli(ws, "predict-pair", "c2", "c9", "--model", "m@nosuch")
    assert bad.returncode == 2 and "no alias 'nosuch'" in bad.stderr


def test_evaluate_says_when_repeats_shrink_and_the_predictor_learns_nothing(ws):
    proc = cli(ws, "evaluate", "--target", LABEL, "--split", "group:run", "--repeats", "5", "--no-mlflow", "--json")
    result = json.loads(proc.stdout)
    assert result["repeats"] == 3  # three runs, each left out once
    assert any("3 repeats, not the 5 asked for" in w for w in result["warnings"])
    assert "3 repeats, not the 5 asked for" in proc.stderr


def test_directions_set_on_import_win_over_the_name_rule(tmp_path):
    import csv

    from ckptsel.training import lower_is_better

    table = tmp_path / "t.csv"
    with table.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model_id", "ppl", "score_loss", "rank_error"])
        for i in range(6):
            w.writerow([f"m{i}", 10 - i, i, i])
    proc = run_cli("--workspace", tmp_path / "w", "import-table", table, "--id-column", "model_id",
                   "--labels", "score_loss,rank_error", "--higher-is-better", "score_loss")
    assert proc.returncode == 0, proc.stderr
    with Store(tmp_path / "w" / "ckptsel.db") as store:
        assert lower_is_better("score_loss", store) is False  # said so, though the name ends in loss
        assert lower_is_better("rank_error", store) is True  # the name rule
    bad = run_cli("--workspace", tmp_path / "w", "import-table", table, "--id-column", "model_id",
                  "--labels", "score_loss", "--lower-is-better", "ppl")
    assert bad.returncode == 2 and "not in --labels" in bad.stderr


def test_conventions_json_objects_and_comma_lists(tmp_path, ws):
    zoo = json.loads(run_cli("zoo", "list", "--json").stdout)
    assert isinstance(zoo, dict) and {p["name"] for p in zoo["presets"]} >= {"micro", "paper-mini"}
    proc = cli(ws, "stability", "--run", "run0", "--feature", "kshot/y/acc,ppl/x/bits_per_byte", "--json")
    assert set(json.loads(proc.stdout)["features"]) == {"kshot/y/acc", "ppl/x/bits_per_byte"}
    from ckptsel.cli import build_parser

    assert build_parser().parse_args(["serve", "--model", "m@champion"]).model == "m@champion"
