"""Stability after Nishida, Isonuma & Oda (arXiv 2510.04848): MTV and IS by hand, trailing
windows by hand, and MTV on the real Pythia series computed here straight from the JSON files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from ckptsel.errors import CkptselError
from ckptsel.lmeval_import import import_lm_eval
from ckptsel.stability import (instability_score, mean_total_variation, plot_stability, run_stability,
                               trailing_is, trailing_mean, trailing_mtv)
from ckptsel.store import Checkpoint, Store
from helpers_tables import check_ok, run_cli

PYTHIA = Path(__file__).resolve().parents[1].parent / "shared/data/pythia-evals"
needs_pythia = pytest.mark.skipif(not PYTHIA.exists(), reason="../shared/data is not beside the checkout")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def json_series(folder: Path, task: str, metric: str) -> list[float]:
    """The metric per checkpoint, ordered by the step in the file name, read with json only."""
    files = sorted(folder.glob("*.json"), key=lambda f: int(re.search(r"_step(\d+)\.json$", f.name)[1]))
    return [json.loads(f.read_text())["results"][task][metric] for f in files]


def mtv_by_loop(xs: list[float]) -> float:
    return sum(abs(b - a) for a, b in zip(xs, xs[1:])) / (len(xs) - 1)


# -- the formulas, by hand -----------------------------------------------------------------------

def test_mtv_by_hand_skips_missing():
    # present values 1, 3, 2, 6: |3-1| + |2-3| + |6-2| = 7 over 3 pairs
    assert mean_total_variation([1.0, 3.0, None, 2.0, float("nan"), 6.0]) == pytest.approx(7 / 3)
    assert mean_total_variation([0.25, 0.25]) == 0.0
    assert mean_total_variation([0.5]) is None
    assert mean_total_variation([None, float("nan")]) is None


def test_instability_score_by_hand():
    p1 = np.array([0, 1, 2, 3])
    p2 = np.array([0, 1, 0, 3])  # example 2 changes: 1/4
    p3 = np.array([1, 1, 0, 0])  # examples 0 and 3 change: 2/4
    assert instability_score([p1, p2, p3]) == pytest.approx((1 / 4 + 2 / 4) / 2)
    assert instability_score([p1, None, p2, p3]) == pytest.approx(0.375)  # a checkpoint without predictions
    assert instability_score([p1, p1]) == 0.0
    assert instability_score([p1]) is None and instability_score([]) is None
    with pytest.raises(CkptselError, match="different numbers of examples"):
        instability_score([p1, np.array([0, 1, 2])])


def test_trailing_windows_by_hand():
    values = [0.0, 1.0, 3.0, None, 2.0, 2.5]
    # K=3: windows [0] [0,1] [0,1,3] - [1,3,2] [3,2,2.5]
    assert trailing_mtv(values, 3) == pytest.approx([None, 1.0, 1.5, None, 1.5, 0.75])
    assert trailing_mean(values, 3) == pytest.approx([0.0, 0.5, 4 / 3, None, 2.0, 2.5])
    # K=2 is the last step's absolute change
    assert trailing_mtv(values, 2) == pytest.approx([None, 1.0, 2.0, None, 1.0, 0.5])
    a, b, c = np.array([0, 0, 0, 0]), np.array([1, 0, 0, 0]), np.array([1, 1, 1, 0])
    # K=3 at c: pairs (a,b) 1/4 and (b,c) 2/4; at the start one checkpoint: None
    assert trailing_is([a, b, None, c], 3) == pytest.approx([None, 0.25, None, 0.375])
    with pytest.raises(CkptselError, match="at least 2"):
        trailing_mtv(values, 1)


# -- a run in the store --------------------------------------------------------------------------

STEPS = [10, 20, 30, 40]
ACC = [0.5, 0.7, 0.6, 0.9]
PREDS = [[0, 1, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0], [1, 0, 1, 1]]  # changes: 1/4, 1/4, 3/4
BPB = [2.0, 1.5, None, 1.25]


@pytest.fixture
def toy_run(store):
    """Run "r" (inserted out of step order) with a k-shot accuracy and its per-example
    predictions, and a perplexity feature missing at step 30; plus a decoy run "other"."""
    with store.transaction():
        for i in (2, 0, 3, 1):
            fp = f"fp{STEPS[i]}"
            store.upsert_checkpoint(Checkpoint(f"r-{STEPS[i]}", None, "r", STEPS[i], fp))
            store.put_features(fp, {"kshot/toy/acc": ACC[i], "step": STEPS[i]}, spec_hash="t")
            if BPB[i] is not None:
                store.put_features(fp, {"ppl/web/bits_per_byte": BPB[i]}, spec_hash="t")
            store.put_predictions(fp, "kshot/toy", np.array(PREDS[i], dtype=np.int16), spec_hash="t")
        store.upsert_checkpoint(Checkpoint("o-1", None, "other", 1, "fpo"))
        store.put_features("fpo", {"kshot/toy/acc": 0.0}, spec_hash="t")
        store.put_predictions("fpo", "kshot/toy", np.array([9, 9, 9, 9], dtype=np.int16), spec_hash="t")
    return store


def test_run_stability_and_stored_window_features(toy_run):
    result = run_stability(toy_run, "r", window=2)
    assert set(result) == {"run", "n_checkpoints", "features"}
    assert (result["run"], result["n_checkpoints"]) == ("r", 4)
    assert set(result["features"]) == {"kshot/toy/acc", "ppl/web/bits_per_byte"}  # not "step"

    acc = result["features"]["kshot/toy/acc"]
    assert acc["mtv"] == pytest.approx((0.2 + 0.1 + 0.3) / 3)
    assert acc["is"] == pytest.approx((0.25 + 0.25 + 0.75) / 3)
    assert acc["window"]["k"] == 2
    assert acc["window"]["mtv"] == pytest.approx({"r-10": None, "r-20": 0.2, "r-30": 0.1, "r-40": 0.3})
    assert acc["window"]["is"] == pytest.approx({"r-10": None, "r-20": 0.25, "r-30": 0.25, "r-40": 0.75})

    bpb = result["features"]["ppl/web/bits_per_byte"]
    assert bpb["mtv"] == pytest.approx((0.5 + 0.25) / 2)  # step 30 has no value: 2.0, 1.5, 1.25
    assert bpb["is"] is None and bpb["window"]["is"] is None
    assert bpb["window"]["mtv"] == pytest.approx({"r-10": None, "r-20": 0.5, "r-40": 0.25})

    frame = toy_run.feature_frame(["r-10", "r-20", "r-30", "r-40"])
    assert list(frame.column("stability/kshot/toy/acc/mtv@2")) == pytest.approx([np.nan, 0.2, 0.1, 0.3], nan_ok=True)
    assert list(frame.column("stability/kshot/toy/acc/is@2")) == pytest.approx([np.nan, 0.25, 0.25, 0.75], nan_ok=True)
    assert list(frame.column("stability/ppl/web/bits_per_byte/mtv@2")) == pytest.approx(
        [np.nan, 0.5, np.nan, 0.25], nan_ok=True)
    assert "stability/ppl/web/bits_per_byte/mtv@2" not in toy_run.feature_names("fp30")
    assert "stability/ppl/web/bits_per_byte/is@2" not in frame.numeric_names
    specs = {r[0] for r in toy_run.conn.execute("SELECT DISTINCT spec_hash FROM features WHERE name LIKE 'stability/%'")}
    assert len(specs) == 1 and "2" in specs.pop()

    # stored stability features are not themselves analysed by default; another K gets its own spec
    assert set(run_stability(toy_run, "r")["features"]) == {"kshot/toy/acc", "ppl/web/bits_per_byte"}
    run_stability(toy_run, "r", ["kshot/toy/acc"], window=3)
    specs = {r[0] for r in toy_run.conn.execute("SELECT DISTINCT spec_hash FROM features WHERE name LIKE 'stability/%'")}
    assert len(specs) == 2
    # K=3 at step 40: 0.7, 0.6, 0.9 -> (0.1 + 0.3) / 2
    assert toy_run.feature_frame(["r-40"]).as_dict(0)["stability/kshot/toy/acc/mtv@3"] == pytest.approx(0.2)


def test_run_stability_errors(toy_run):
    with pytest.raises(CkptselError, match="no checkpoints of run 'nope'"):
        run_stability(toy_run, "nope")
    with pytest.raises(CkptselError, match="no numeric feature 'kshot/other/acc'"):
        run_stability(toy_run, "r", ["kshot/other/acc"])
    with pytest.raises(CkptselError, match="at least 2"):
        run_stability(toy_run, "r", window=1)
    with toy_run.transaction():
        toy_run.upsert_checkpoint(Checkpoint("r-x", None, "r", None, "fpx"))
    with pytest.raises(CkptselError, match="without a step"):
        run_stability(toy_run, "r")


def test_instability_reads_each_metric_s_own_picks(store):
    """acc picks argmax LL, acc_norm argmax LL/len: two arrays that flip at different examples.
    acc:      [0,1,2] -> [0,1,2] -> [1,1,2]: 0/3 then 1/3 flips, IS = 1/6
    acc_norm: [2,2,0] -> [1,2,0] -> [1,0,1]: 1/3 then 2/3 flips, IS = 1/2"""
    acc = [[0, 1, 2], [0, 1, 2], [1, 1, 2]]
    acc_norm = [[2, 2, 0], [1, 2, 0], [1, 0, 1]]
    with store.transaction():
        for i, step in enumerate((1, 2, 3)):
            fp = f"fp{step}"
            store.upsert_checkpoint(Checkpoint(f"m-{step}", None, "m", step, fp))
            store.put_features(fp, {"kshot/t/acc": 0.1 * step, "kshot/t/acc_norm": 0.2 * step}, spec_hash="h")
            store.put_predictions(fp, "kshot/t/acc", np.array(acc[i], dtype=np.int16), spec_hash="h")
            store.put_predictions(fp, "kshot/t/acc_norm", np.array(acc_norm[i], dtype=np.int16), spec_hash="h")
    got = run_stability(store, "m", write=False)["features"]
    assert got["kshot/t/acc"]["is"] == pytest.approx(1 / 6)
    assert got["kshot/t/acc_norm"]["is"] == pytest.approx(1 / 2)


def test_legacy_task_predictions_count_for_acc_only(store):
    """Old stores hold one ``kshot/<task>`` array, the acc picks: acc_norm gets no IS from it."""
    with store.transaction():
        for step, picks in ((1, [0, 1]), (2, [1, 1])):  # one of two examples flips: IS = 1/2
            fp = f"fp{step}"
            store.upsert_checkpoint(Checkpoint(f"m-{step}", None, "m", step, fp))
            store.put_features(fp, {"kshot/t/acc": 0.5, "kshot/t/acc_norm": 0.5}, spec_hash="h")
            store.put_predictions(fp, "kshot/t", np.array(picks, dtype=np.int16), spec_hash="h")
    got = run_stability(store, "m", write=False)["features"]
    assert got["kshot/t/acc"]["is"] == pytest.approx(1 / 2)
    assert got["kshot/t/acc_norm"]["is"] is None


def test_plot_is_a_png(toy_run, tmp_path):
    path, n = plot_stability(toy_run, "r", ["kshot/toy/acc", "ppl/web/bits_per_byte"], tmp_path / "s.png", window=2)
    assert n == 2 and path.read_bytes()[:8] == PNG_MAGIC


# -- the real Pythia series ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def pythia_160m(tmp_path_factory):
    root = tmp_path_factory.mktemp("pythia")
    with Store(root / "ckptsel.db") as s:
        import_lm_eval(s, [PYTHIA / "pythia-160m/zero-shot"])
    return root


@needs_pythia
def test_mtv_of_lambada_acc_matches_the_json_files(pythia_160m):
    xs = json_series(PYTHIA / "pythia-160m/zero-shot", "lambada_openai", "acc")
    assert len(xs) == 27
    expected = mtv_by_loop(xs)
    with Store(pythia_160m / "ckptsel.db") as s:
        got = run_stability(s, "pythia-160m", ["lmeval/lambada_openai/acc"], write=False)
    assert got["features"]["lmeval/lambada_openai/acc"]["mtv"] == pytest.approx(expected, rel=1e-12)
    assert got["features"]["lmeval/lambada_openai/acc"]["is"] is None


@needs_pythia
def test_cli_stability_json_and_plot(pythia_160m, tmp_path):
    folder = PYTHIA / "pythia-160m/zero-shot"
    files = list(folder.glob("*.json"))
    names = {f"lmeval/{t}/{m}" for f in files for t, ms in json.loads(f.read_text())["results"].items()
             for m in ms if not m.endswith("_stderr")}
    proc = check_ok(run_cli("--workspace", pythia_160m, "stability", "--run", "pythia-160m", "--json"))
    out = json.loads(proc.stdout)
    assert set(out) == {"run", "n_checkpoints", "features"}
    assert (out["run"], out["n_checkpoints"]) == ("pythia-160m", len(files))
    assert set(out["features"]) == names
    assert all(set(e) == {"mtv", "is"} and e["is"] is None for e in out["features"].values())
    for task, metric in [("lambada_openai", "acc"), ("piqa", "acc_norm"), ("lambada_openai", "ppl")]:
        assert out["features"][f"lmeval/{task}/{metric}"]["mtv"] == pytest.approx(
            mtv_by_loop(json_series(folder, task, metric)), rel=1e-12)

    png = tmp_path / "plots/lambada.png"
    proc = check_ok(run_cli("--workspace", pythia_160m, "stability", "--run", "pythia-160m",
                            "--feature", "lmeval/lambada_openai/acc", "--feature", "lmeval/lambada_openai/ppl",
                            "--window", "3", "--json", "--plot", png))
    out = json.loads(proc.stdout)
    window = out["features"]["lmeval/lambada_openai/acc"]["window"]
    xs = json_series(folder, "lambada_openai", "acc")
    assert window["k"] == 3 and window["is"] is None
    assert window["mtv"]["pythia-160m@143000"] == pytest.approx(mtv_by_loop(xs[-3:]), rel=1e-12)
    assert png.read_bytes()[:8] == PNG_MAGIC
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(png).shape
    assert width > 400 and height > 200
