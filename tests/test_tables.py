"""Importing CSV/Parquet tables: type detection, labels, missing values, errors, atomicity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ckptsel.errors import CkptselError
from ckptsel.tables import import_table, table_fingerprint

GOOD = """
    id,run,step,loss,ppl,arch,acc,bleu
    a,r1,100,2.5,12,llama,0.5,30
    b,r1,200,2.1,11.5,llama,,31
    c,r2,100,,10,gpt,0.7,
    d,r2,200,1.9,9.25,,0.8,33.5
"""


def _state(store):
    """Everything in the database, for before/after comparisons."""
    return list(store.conn.iterdump())


def _import_good(store, write_csv):
    return import_table(store, write_csv("good.csv", GOOD), id_column="id", labels=["acc", "bleu"],
                        run_column="run", step_column="step")


def test_good_csv_import(store, write_csv):
    summary = _import_good(store, write_csv)
    assert summary.checkpoints == 4
    assert set(summary.numeric) - {"step"} == {"loss", "ppl"}  # step may also serve as a feature
    assert summary.categorical == ["arch"]
    assert summary.labels == ["acc", "bleu"]
    assert summary.missing == {"loss": 1, "arch": 1, "acc": 1, "bleu": 1}
    text = summary.describe()
    assert "imported 4 checkpoints" in text
    for part in ("loss (1)", "arch (1)", "acc (1)", "bleu (1)"):
        assert part in text

    ckpts = {c.id: c for c in store.checkpoints()}
    assert sorted(ckpts) == ["a", "b", "c", "d"]
    assert (ckpts["b"].run, ckpts["b"].step) == ("r1", 200)
    assert (ckpts["c"].run, ckpts["c"].step) == ("r2", 100)
    assert ckpts["a"].fingerprint == table_fingerprint("a")
    assert store.get_checkpoint("r2@200").id == "d"

    ff = store.feature_frame(["a", "b", "c", "d"])
    assert "run" not in ff.numeric_names + ff.categorical_names
    assert not {"id", "acc", "bleu"} & set(ff.numeric_names + ff.categorical_names)
    np.testing.assert_array_equal(ff.column("loss"), [2.5, 2.1, np.nan, 1.9])
    np.testing.assert_array_equal(ff.column("ppl"), [12.0, 11.5, 10.0, 9.25])
    assert ff.column("arch").tolist() == ["llama", "llama", "gpt", None]
    assert store.labels("acc") == {"a": 0.5, "c": 0.7, "d": 0.8}
    assert store.labels("bleu") == {"a": 30.0, "b": 31.0, "d": 33.5}


def test_ignore_columns_and_whitespace(store, write_csv):
    path = write_csv("t.csv", """
        name, x, notes, y
        m1, 1, keep me, 3
        m2, 2, , 4
        m3, 3, other, 5
    """)
    summary = import_table(store, path, id_column="name", labels=["y"], ignore=["notes"])
    assert summary.numeric == ["x"] and summary.categorical == []
    assert [c.id for c in store.checkpoints()] == ["m1", "m2", "m3"]
    assert store.labels("y") == {"m1": 3.0, "m2": 4.0, "m3": 5.0}


def test_parquet_import(store, tmp_path):
    df = pd.DataFrame({
        "model": ["m1", "m2", "m3"],
        "run": ["r", "r", "s"],
        "step": [10, 20, 10],
        "ppl": [12.5, np.nan, 0.1],
        "mix": ["web", "code", None],
        "score": [0.25, 0.5, np.nan],
    })
    path = tmp_path / "t.parquet"
    df.to_parquet(path)
    summary = import_table(store, path, id_column="model", labels=["score"], run_column="run",
                           step_column="step")
    assert summary.checkpoints == 3
    assert "ppl" in summary.numeric and summary.categorical == ["mix"]
    assert summary.missing == {"ppl": 1, "mix": 1, "score": 1}
    ff = store.feature_frame(["m1", "m2", "m3"])
    np.testing.assert_array_equal(ff.column("ppl"), [12.5, np.nan, 0.1])
    assert ff.column("mix").tolist() == ["web", "code", None]
    assert store.labels("score") == {"m1": 0.25, "m2": 0.5}
    assert store.get_checkpoint("s@10").id == "m3"


def test_reimport_updates_values(store, write_csv):
    _import_good(store, write_csv)
    fps = {c.id: c.fingerprint for c in store.checkpoints()}
    changed = GOOD.replace("a,r1,100,2.5,12,llama,0.5,30", "a,r1,100,3.5,12,gpt,0.55,30") \
                  .replace("d,r2,200,1.9,9.25,,0.8,33.5", "d,r2,300,,9.25,llama,0.9,33.5")
    summary = import_table(store, write_csv("good.csv", changed), id_column="id", labels=["acc", "bleu"],
                           run_column="run", step_column="step")
    assert summary.checkpoints == 4
    assert {c.id: c.fingerprint for c in store.checkpoints()} == fps  # same checkpoints, not new ones
    assert store.counts()["checkpoints"] == 4
    ff = store.feature_frame(["a", "b", "c", "d"])
    np.testing.assert_array_equal(ff.column("loss"), [3.5, 2.1, np.nan, np.nan])
    assert ff.column("arch").tolist() == ["gpt", "llama", "gpt", "llama"]
    assert store.labels("acc") == {"a": 0.55, "c": 0.7, "d": 0.9}
    assert store.get_checkpoint("d").step == 300


def test_reimport_clears_a_removed_label(store, write_csv):
    _import_good(store, write_csv)
    changed = GOOD.replace("a,r1,100,2.5,12,llama,0.5,30", "a,r1,100,2.5,12,llama,,30")
    import_table(store, write_csv("good.csv", changed), id_column="id", labels=["acc", "bleu"],
                 run_column="run", step_column="step")
    assert store.labels("acc") == {"c": 0.7, "d": 0.8}


# -- errors ----------------------------------------------------------------------------------

BASE = """
    id,loss,arch,acc
    a,2.5,llama,0.5
    b,2.1,llama,0.6
    c,1.9,gpt,0.7
"""

# (name, csv text, kwargs, fragments the message must contain besides the file name)
CASES = [
    ("missing_id_column", BASE, {"id_column": "model"}, ["'model'", "id column"]),
    ("duplicate_ids", BASE.replace("c,1.9", "a,1.9"), {}, ["'a'", "row 3 (line 4)", "row 1 (line 2)"]),
    ("empty_id", BASE.replace("b,2.1", ",2.1"), {}, ["row 2 (line 3)", "'id'"]),
    ("label_absent", BASE, {"labels": ["bleu"]}, ["'bleu'"]),
    ("label_non_numeric", BASE.replace("llama,0.6", "llama,good"), {},
     ["row 2 (line 3)", "'acc'", "'good'"]),
    ("label_all_empty", BASE.replace(",0.5", ",").replace(",0.6", ",").replace(",0.7", ","), {}, ["'acc'"]),
    ("stray_string", BASE.replace("c,1.9", "c,oops") + "    d,1.5,gpt,0.8\n", {},
     ["row 3 (line 4)", "'loss'", "'oops'"]),
    ("header_only", "id,loss,arch,acc\n", {}, ["empty"]),
    ("no_features", "id,acc\na,1\nb,2\n", {}, ["feature"]),
    ("all_features_ignored", BASE, {"ignore": ["loss", "arch"]}, ["feature"]),
    ("no_labels_given", BASE, {"labels": []}, ["--labels"]),
    ("bad_step", "id,step,x,acc\na,1.5,1,1\nb,2,2,2\n", {"step_column": "step"},
     ["row 1 (line 2)", "'step'"]),
    ("step_inf", "id,step,x,acc\na,1,1,1\nb,inf,2,2\n", {"step_column": "step"},
     ["row 2 (line 3)", "'step'", "'inf'"]),
    ("step_nan_spelling", "id,step,x,acc\na,nAn,1,1\nb,2,2,2\n", {"step_column": "step"},
     ["row 1 (line 2)", "'step'"]),
]


@pytest.mark.parametrize("name,text,kwargs,fragments", CASES, ids=[c[0] for c in CASES])
def test_import_errors_name_file_and_cell_and_change_nothing(store, write_csv, name, text, kwargs,
                                                             fragments):
    _import_good(store, write_csv)
    before = _state(store)
    path = write_csv(f"{name}.csv", text)
    args = {"id_column": "id", "labels": ["acc"], **kwargs}
    with pytest.raises(CkptselError) as err:
        import_table(store, path, **args)
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)
    assert _state(store) == before


def test_nonexistent_file(store, tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(CkptselError) as err:
        import_table(store, path, id_column="id", labels=["acc"])
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert store.counts() == {"checkpoints": 0, "features": 0, "labels": 0}


def test_unreadable_parquet(store, tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"definitely not parquet")
    with pytest.raises(CkptselError) as err:
        import_table(store, path, id_column="id", labels=["acc"])
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_parquet_errors_name_row_without_line(store, tmp_path):
    df = pd.DataFrame({"id": ["a", "b", "c"], "x": [1.0, 2.0, 3.0], "acc": ["0.1", "bad", "0.3"]})
    path = tmp_path / "t.parquet"
    df.to_parquet(path)
    with pytest.raises(CkptselError) as err:
        import_table(store, path, id_column="id", labels=["acc"])
    msg = str(err.value)
    assert str(path) in msg and "row 2" in msg and "'acc'" in msg and "line" not in msg
    assert store.counts() == {"checkpoints": 0, "features": 0, "labels": 0}


# -- real data: OLMo-1B fine-tuning outcomes (Sun & Dredze, arXiv 2408.06663) in ../shared ------

OLMO = Path(__file__).resolve().parents[1].parent / "shared/data/olmo1b-sft-outcomes/all_perf_table.csv"


@pytest.mark.skipif(not OLMO.exists(), reason="../shared/data is not beside the checkout")
def test_olmo_long_table_is_refused_with_the_duplicate_row(store):
    """The file has one row per (model, eval dataset): as a checkpoint table its ids repeat."""
    raw = pd.read_csv(OLMO)
    first = {}
    for i, mid in enumerate(raw["model_id"]):
        if mid in first:
            dup_row, first_row = i, first[mid]
            break
        first[mid] = i
    with pytest.raises(CkptselError) as err:
        import_table(store, OLMO, id_column="model_id", labels=["Performance"])
    msg = str(err.value)
    assert f"row {dup_row + 1} (line {dup_row + 2})" in msg and f"row {first_row + 1}" in msg
    assert store.counts() == {"checkpoints": 0, "features": 0, "labels": 0}


@pytest.mark.skipif(not OLMO.exists(), reason="../shared/data is not beside the checkout")
def test_olmo_pivoted_table_imports_and_evaluates(store, tmp_path):
    """Base-model 4-shot scores per eval set as features, the mnli fine-tuning outcome as label."""
    from ckptsel.evaluation import evaluate
    from ckptsel.training import labelled_table

    raw = pd.read_csv(OLMO, index_col=0)
    raw["step"] = raw["model_id"].str.extract(r"(?:checkpoint-|ckpt)(\d+)")[0].astype(float)
    base = raw[raw["model_id"].str.match(r"olmo1b_checkpoint-\d+_original_hf_4shots")]
    feats = base.pivot_table(index="step", columns="eval dataset", values="Performance").dropna(axis=1)
    ft = raw[raw["model_id"].str.match(r"olmo1b_hf_ckpt\d+_mnli_") & (raw["eval dataset"] == "mnli_matched")
             & raw["model_id"].str.endswith("_4shots")]
    label = ft.groupby("step")["Performance"].mean().rename("ft_mnli")
    table = feats.join(label, how="inner").reset_index()
    table.insert(0, "ckpt", "step" + table["step"].astype(int).astype(str))
    path = tmp_path / "olmo.csv"
    table.to_csv(path, index=False)
    summary = import_table(store, path, id_column="ckpt", labels=["ft_mnli"])
    assert summary.checkpoints == len(table) >= 5
    lt = labelled_table(store, "ft_mnli")
    np.testing.assert_allclose(np.sort(lt.y), np.sort(table["ft_mnli"].to_numpy()))
    result = evaluate(lt.frame, lt.y, target="ft_mnli", split="random:0.6", repeats=5, seed=0)
    n_test = len(table) - int(round(0.6 * len(table)))
    assert result["pairs_per_repeat"] == n_test * (n_test - 1) // 2
    assert 0.0 <= result["predictor"]["accuracy_mean"] <= 1.0
