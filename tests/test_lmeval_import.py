"""lm-evaluation-harness results as features: the 630 real Pythia result files (0.3 layout),
a 0.4-layout file written here, and malformed files. Expected values come straight from the
JSON files through the json module, never from the importer."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from ckptsel.errors import CkptselError
from ckptsel.lmeval_import import import_lm_eval, parse_result_file
from ckptsel.store import Checkpoint, Store
from helpers_tables import check_ok, run_cli

PYTHIA = Path(__file__).resolve().parents[1].parent / "shared/data/pythia-evals"
needs_pythia = pytest.mark.skipif(not PYTHIA.exists(), reason="../shared/data is not beside the checkout")


def step_of(path: Path) -> int:
    return int(re.search(r"_step(\d+)\.json$", path.name)[1])


def expected_features(path: Path) -> dict[str, float]:
    """lmeval/<task>/<metric> (lmeval/<task>@<k>shot/<metric> for k > 0) for every metric of a
    0.3 file except the standard errors."""
    data = json.loads(path.read_text())
    k = data["config"]["num_fewshot"]
    shot = f"@{k}shot" if k else ""
    return {f"lmeval/{task}{shot}/{metric}": value for task, metrics in data["results"].items()
            for metric, value in metrics.items() if not metric.endswith("_stderr")}


def snapshot(store: Store) -> tuple:
    rows = lambda sql: sorted(store.conn.execute(sql).fetchall(), key=repr)  # noqa: E731
    return (rows("SELECT id, run, step, fingerprint FROM checkpoints"),
            rows("SELECT fingerprint, name, value, spec_hash FROM features"))


@needs_pythia
def test_imports_all_630_pythia_files(store):
    files = sorted(PYTHIA.rglob("*.json"))
    per_run = Counter(f"{f.parent.parent.name}/{f.parent.name}" for f in files)
    assert len(files) == 630 and len(per_run) == 30
    assert {n for r, n in per_run.items() if r.endswith("/zero-shot")} == {27}
    assert {n for r, n in per_run.items() if r.endswith("/five-shot")} == {15}

    summary = import_lm_eval(store, [PYTHIA])
    # zero-shot and five-shot results of one model at one step are one checkpoint of run <model>
    steps = {(f.parent.parent.name, step_of(f)) for f in files}
    assert len(steps) == 15 * 27  # every five-shot step is also a zero-shot step
    assert (summary.files, summary.checkpoints, summary.created) == (630, len(steps), len(steps))
    ckpts = store.checkpoints()
    assert {(c.run, c.step) for c in ckpts} == steps
    for c in ckpts:
        assert c.id == f"{c.run}@{c.step}"
        assert c.fingerprint == "lmeval:" + hashlib.sha256(c.id.encode()).hexdigest()[:16]

    zero, five = PYTHIA / "pythia-12b/zero-shot/12b_step143000.json", PYTHIA / "pythia-12b/five-shot/12b-5shot_step143000.json"
    got = store.feature_frame(["pythia-12b@143000"]).as_dict(0)
    assert {k: v for k, v in got.items() if k.startswith("lmeval/")} == {**expected_features(zero),
                                                                         **expected_features(five)}
    assert "lmeval/logiqa@5shot/acc" in got and not any("stderr" in k for k in got)
    f = PYTHIA / "pythia-160m/zero-shot/160m_step1000.json"
    assert store.feature_frame(["pythia-160m@1000"]).as_dict(0) == expected_features(f)
    assert store.counts()["features"] == sum(len(expected_features(f)) for f in files)


@needs_pythia
def test_existing_checkpoint_keeps_its_id_and_fingerprint(store):
    with store.transaction():
        store.upsert_checkpoint(Checkpoint("my-160m-1k", "/ckpts/160m/step1000", "pythia-160m", 1000,
                                           "weights:0123456789abcdef"))
    summary = import_lm_eval(store, [PYTHIA / "pythia-160m/zero-shot"])
    assert (summary.created, summary.existing) == (26, 1)
    mine = store.get_checkpoint("my-160m-1k")
    assert (mine.fingerprint, mine.path) == ("weights:0123456789abcdef", "/ckpts/160m/step1000")
    assert len(store.checkpoints()) == 27
    want = json.loads((PYTHIA / "pythia-160m/zero-shot/160m_step1000.json").read_text())["results"]
    got = store.feature_frame(["my-160m-1k"]).as_dict(0)
    assert got["lmeval/lambada_openai/acc"] == want["lambada_openai"]["acc"]

    # --run puts the same files in another run: new checkpoints, same numbers
    summary = import_lm_eval(store, [PYTHIA / "pythia-160m/zero-shot/160m_step1000.json"], run="elsewhere")
    assert summary.created == 1
    assert store.feature_frame(["elsewhere@1000"]).as_dict(0)["lmeval/piqa/acc"] == want["piqa"]["acc"]


LAYOUT_04 = {
    "results": {
        "hellaswag": {"alias": "hellaswag", "acc,none": 0.41, "acc_stderr,none": 0.0049,
                      "acc_norm,none": 0.52, "acc_norm_stderr,none": 0.0050},
        "gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.10, "exact_match_stderr,strict-match": 0.008,
                  "exact_match,flexible-extract": 0.125, "exact_match_stderr,flexible-extract": "N/A"},
        "wikitext": {"alias": "wikitext", "word_perplexity,none": float("inf"), "word_perplexity_stderr,none": "N/A"},
    },
    "group_subtasks": {"hellaswag": [], "gsm8k": []},
    "configs": {"hellaswag": {"task": "hellaswag", "num_fewshot": 0}, "gsm8k": {"task": "gsm8k", "num_fewshot": 5}},
    "versions": {"hellaswag": 1.0, "gsm8k": 3.0},
    "n-shot": {"hellaswag": 0, "gsm8k": 5},
    "higher_is_better": {"hellaswag": {"acc": True, "acc_norm": True}},
    "config": {"model": "hf", "model_args": {"pretrained": "org/model-1b", "revision": "step2000"}, "batch_size": 8},
    "git_hash": "abc1234",
}
FEATURES_04 = {"lmeval/hellaswag/acc": 0.41, "lmeval/hellaswag/acc_norm": 0.52,  # gsm8k: n-shot 5
               "lmeval/gsm8k@5shot/exact_match,strict-match": 0.10, "lmeval/gsm8k@5shot/exact_match,flexible-extract": 0.125,
               "lmeval/wikitext/word_perplexity": None}  # infinity is stored as missing


def test_04_layout_is_parsed(tmp_path, store):
    path = tmp_path / "evals/model-1b/mixed/results_2025-01-01T00-00-00.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(LAYOUT_04))
    r = parse_result_file(path)
    assert (r.layout, r.run, r.step, r.model) == ("0.4", "mixed", 2000, "org/model-1b")
    assert r.features == FEATURES_04
    path5 = tmp_path / "evals/model-1b/5shot/results.json"  # a setting folder: the run is the model folder
    path5.parent.mkdir(parents=True)
    path5.write_text(json.dumps(LAYOUT_04))
    assert parse_result_file(path5).run == "model-1b"

    # model_args as a string without a revision: the step comes from the file name
    other = dict(LAYOUT_04, config={"model": "hf", "model_args": "pretrained=org/model-1b,dtype=bfloat16"})
    named = tmp_path / "flat/model-1b_step300.json"
    named.parent.mkdir()
    named.write_text(json.dumps(other))
    import_lm_eval(store, [path, named], run="m1b")
    assert {c.id: c.step for c in store.checkpoints()} == {"m1b@300": 300, "m1b@2000": 2000}
    assert store.feature_frame(["m1b@300"]).as_dict(0) == FEATURES_04


BAD_FILES = {
    "truncated.json": '{"results": {"piqa": {"acc": 0.6',
    "not_results.json": '{"architectures": ["LlamaForCausalLM"], "hidden_size": 64}',
    "task_not_object.json": '{"results": {"piqa": 0.6}, "config": {"model_args": "revision=step5"}}',
    "nostep.json": '{"results": {"piqa": {"acc": 0.6}}, "config": {"model_args": "pretrained=x"}}',
    "x_step7.json": '{"results": {"piqa": {"acc": 0.6}}, "config": {"model_args": "pretrained=x,revision=step8"}}',
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_malformed_file_is_one_line_error_and_store_unchanged(tmp_path, store, name):
    good = tmp_path / "evals/m/zero-shot"
    good.mkdir(parents=True)
    (good / "m_step10.json").write_text(json.dumps({"results": {"piqa": {"acc": 0.55, "acc_stderr": 0.01}},
                                                   "config": {"model_args": "revision=step10"}}))
    import_lm_eval(store, [good])
    (good / "m_step20.json").write_text(json.dumps({"results": {"piqa": {"acc": 0.58}}}))
    bad = good / name
    bad.write_text(BAD_FILES[name])
    before = snapshot(store)
    with pytest.raises(CkptselError) as err:
        import_lm_eval(store, [good])
    message = str(err.value)
    assert "\n" not in message and str(bad) in message
    assert snapshot(store) == before


def test_cli_malformed_file_exits_2_naming_it(tmp_path):
    bad = tmp_path / "evals/m/zero-shot/m_step1.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    proc = run_cli("--workspace", tmp_path / "ws", "import-lm-eval", tmp_path / "evals")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0]
    with Store(tmp_path / "ws/ckptsel.db") as s:
        assert s.counts() == {"checkpoints": 0, "features": 0, "labels": 0}


@needs_pythia
def test_cli_import_json_summary(tmp_path):
    proc = check_ok(run_cli("--workspace", tmp_path / "ws", "import-lm-eval", PYTHIA / "pythia-70m", "--json"))
    summary = json.loads(proc.stdout)
    n_zero = len(list((PYTHIA / "pythia-70m/zero-shot").glob("*.json")))
    n_five = len(list((PYTHIA / "pythia-70m/five-shot").glob("*.json")))
    steps = {step_of(f) for f in (PYTHIA / "pythia-70m").rglob("*.json")}
    assert summary["runs"] == {"pythia-70m": len(steps)}
    assert summary["checkpoints"] == summary["created"] == len(steps) == 27 and n_zero + n_five == 42
