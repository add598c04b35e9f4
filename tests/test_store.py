"""The SQLite store: round trips, newest-row-wins, resolution, schema versioning, crash safety."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ckptsel.errors import CkptselError
from ckptsel.store import SCHEMA_VERSION, Checkpoint, Store, spec_hash


def _ck(cid, path=None, run=None, step=None, fp=None, **meta):
    return Checkpoint(cid, path, run, step, fp or f"fp-{cid}", dict(meta))


# -- round trips -----------------------------------------------------------------------------

def test_checkpoint_round_trip_and_upsert(store):
    store.upsert_checkpoint(_ck("b", "/x/b", "r1", 200, note="hi", n=3))
    store.upsert_checkpoint(_ck("a", "/x/a", "r1", 100))
    store.upsert_checkpoint(_ck("z"))  # no run: listed last
    got = store.checkpoints()
    assert [c.id for c in got] == ["a", "b", "z"]
    assert got[1] == Checkpoint("b", "/x/b", "r1", 200, "fp-b", {"note": "hi", "n": 3})
    assert store.checkpoints(["z", "a"]) == [got[2], got[0]]

    # Upsert changes the row in place.
    store.upsert_checkpoint(_ck("b", "/y/b", "r2", 7, fp="fp-new"))
    assert store.get_checkpoint("b") == Checkpoint("b", "/y/b", "r2", 7, "fp-new", {})
    assert store.counts()["checkpoints"] == 3


def test_features_and_labels_round_trip(store):
    store.upsert_checkpoint(_ck("a"))
    store.upsert_checkpoint(_ck("b"))
    store.upsert_checkpoint(_ck("c"))
    store.put_features("fp-a", {"loss": 2.5, "ppl": 12.0}, {"arch": "llama", "mix": "web"}, spec_hash="s")
    store.put_features("fp-b", {"loss": None, "ppl": float("nan")}, {"arch": None, "mix": "code"}, spec_hash="s")
    store.put_features("fp-c", {"loss": -1.0}, spec_hash="s")  # ppl, arch, mix never written
    store.put_label("fp-a", "acc", 0.75, spec_hash="s", std=0.01, n=3)
    store.put_label("fp-b", "acc", None, spec_hash="s")  # missing label
    store.put_label("fp-c", "acc", 0.5, spec_hash="s")
    store.put_label("fp-c", "bleu", 31.0, spec_hash="s")

    ff = store.feature_frame()
    assert ff.ids == ["a", "b", "c"]
    assert ff.numeric_names == ["loss", "ppl"]
    assert ff.categorical_names == ["arch", "mix"]
    expected_num = np.array([[2.5, 12.0], [np.nan, np.nan], [-1.0, np.nan]])
    np.testing.assert_array_equal(ff.numeric, expected_num)  # NaN == NaN in this helper
    assert ff.categorical.tolist() == [["llama", "web"], [None, "code"], [None, None]]
    assert ff.as_dict(1) == {"loss": None, "ppl": None, "arch": None, "mix": "code"}
    np.testing.assert_array_equal(ff.column("loss"), [2.5, np.nan, -1.0])

    # A subset, in the requested order.
    sub = store.feature_frame(["c", "a"])
    assert sub.ids == ["c", "a"]
    np.testing.assert_array_equal(sub.numeric, expected_num[[2, 0]])

    assert store.labels("acc") == {"a": 0.75, "c": 0.5}
    assert store.labels("bleu") == {"c": 31.0}
    assert store.labels("acc", ["a"]) == {"a": 0.75}
    assert store.targets() == ["acc", "bleu"]
    assert store.counts() == {"checkpoints": 3, "features": 4 + 4 + 1, "labels": 4}
    row = store.conn.execute("SELECT std, n FROM labels WHERE fingerprint='fp-a'").fetchone()
    assert row == (0.01, 3)


def test_values_persist_across_reopen(tmp_path):
    path = tmp_path / "s.db"
    with Store(path) as s:
        s.upsert_checkpoint(_ck("a", run="r", step=1))
        s.put_features("fp-a", {"x": 1.25}, {"k": "v"}, spec_hash="h")
        s.put_label("fp-a", "t", 3.5, spec_hash="h")
    with Store(path, create=False) as s:
        ff = s.feature_frame()
        assert ff.numeric.tolist() == [[1.25]] and ff.categorical.tolist() == [["v"]]
        assert s.labels("t") == {"a": 3.5}


def test_newest_spec_row_wins(store):
    store.upsert_checkpoint(_ck("a"))
    store.put_features("fp-a", {"x": 1.0}, {"k": "old"}, spec_hash="spec1")
    store.put_features("fp-a", {"x": 2.0}, {"k": "new"}, spec_hash="spec2")
    ff = store.feature_frame()
    assert ff.numeric.tolist() == [[2.0]] and ff.categorical.tolist() == [["new"]]
    # Rewriting the older spec makes it the newest again; both rows stay stored.
    store.put_features("fp-a", {"x": 3.0}, spec_hash="spec1")
    assert store.feature_frame().numeric.tolist() == [[3.0]]
    assert store.counts()["features"] == 4

    store.put_label("fp-a", "acc", 0.1, spec_hash="spec1")
    store.put_label("fp-a", "acc", 0.2, spec_hash="spec2")
    assert store.labels("acc") == {"a": 0.2}
    store.put_label("fp-a", "acc", 0.3, spec_hash="spec1")
    assert store.labels("acc") == {"a": 0.3}
    assert store.counts()["labels"] == 2


def test_features_follow_the_fingerprint(store):
    store.upsert_checkpoint(_ck("a", fp="w1"))
    store.put_features("w1", {"x": 1.0}, spec_hash="s")
    # The weights changed: a new fingerprint does not inherit the old numbers.
    store.upsert_checkpoint(_ck("a", fp="w2"))
    ff = store.feature_frame()
    assert ff.ids == ["a"] and ff.numeric_names == [] and ff.numeric.shape == (1, 0)


def test_spec_hash_is_stable_and_key_order_free():
    assert spec_hash({"a": 1, "b": [1, 2]}) == spec_hash({"b": [1, 2], "a": 1})
    assert spec_hash({"a": 1}) != spec_hash({"a": 2})
    assert len(spec_hash({})) == 16


# -- resolution ------------------------------------------------------------------------------

def test_resolve_by_id_path_and_run_at_step(store, tmp_path, monkeypatch):
    ckdir = tmp_path / "ckpts" / "step100"
    store.upsert_checkpoint(_ck("alpha", str(ckdir), "runA", 100))
    store.upsert_checkpoint(_ck("beta", "/abs/beta", "team@runB", -5))
    assert store.get_checkpoint("alpha").path == str(ckdir)
    assert store.get_checkpoint(str(ckdir)).id == "alpha"
    monkeypatch.chdir(tmp_path)
    assert store.get_checkpoint("ckpts/step100").id == "alpha"  # relative path is resolved
    assert store.get_checkpoint("/abs/beta").id == "beta"
    assert store.get_checkpoint("runA@100").id == "alpha"
    assert store.get_checkpoint("team@runB@-5").id == "beta"  # run names may contain '@'


def test_id_wins_over_run_at_step(store):
    store.upsert_checkpoint(_ck("r@1", run="other", step=9))
    store.upsert_checkpoint(_ck("x", run="r", step=1))
    assert store.get_checkpoint("r@1").id == "r@1"


def test_unknown_checkpoint_error(store):
    store.upsert_checkpoint(_ck("a", run="r", step=1))
    for ref in ("nope", "r@2", "/no/such/path"):
        with pytest.raises(CkptselError) as err:
            store.get_checkpoint(ref)
        msg = str(err.value)
        assert repr(ref) in msg
        assert "ckptsel list" in msg
        assert "\n" not in msg


def test_missing_store_without_create(tmp_path):
    with pytest.raises(CkptselError) as err:
        Store(tmp_path / "absent.db", create=False)
    assert "absent.db" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "absent.db").exists()


# -- schema ----------------------------------------------------------------------------------

def _schema_objects(path):
    con = sqlite3.connect(path)
    try:
        return sorted(con.execute("SELECT type, name, sql FROM sqlite_master").fetchall(), key=str)
    finally:
        con.close()


def test_schema_version_and_idempotent_migrations(tmp_path):
    path = tmp_path / "s.db"
    with Store(path) as s:
        assert s.schema_version == SCHEMA_VERSION
        s.upsert_checkpoint(_ck("a"))
        s.put_label("fp-a", "t", 1.0, spec_hash="h")
    objects = _schema_objects(path)
    for _ in range(2):
        with Store(path) as s:
            assert s.schema_version == SCHEMA_VERSION
            assert s.counts() == {"checkpoints": 1, "features": 0, "labels": 1}
    assert _schema_objects(path) == objects
    con = sqlite3.connect(path)
    assert con.execute("SELECT key, value FROM meta").fetchall() == [("schema_version", str(SCHEMA_VERSION))]
    con.close()


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "s.db"
    Store(path).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    with pytest.raises(CkptselError) as err:
        Store(path)
    msg = str(err.value)
    assert str(path) in msg and f"version {SCHEMA_VERSION + 1}" in msg and "upgrade" in msg
    assert "\n" not in msg


def test_non_sqlite_file_is_refused(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("this is a text file, not a database\n" * 50)
    with pytest.raises(CkptselError) as err:
        Store(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert path.read_text().startswith("this is a text file")  # left untouched


def test_journal_mode_is_wal(store):
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    con = sqlite3.connect(store.path)  # WAL is persistent: a second connection sees it too
    assert con.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    con.close()


def test_transaction_rolls_back_on_exception(store):
    store.upsert_checkpoint(_ck("a"))
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.upsert_checkpoint(_ck("b"))
            store.put_label("fp-b", "t", 1.0, spec_hash="h")
            raise RuntimeError("boom")
    assert [c.id for c in store.checkpoints()] == ["a"]
    assert store.counts()["labels"] == 0


# -- crash safety ----------------------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import os, sys, time
    from ckptsel.store import Checkpoint, Store
    path, how = sys.argv[1], sys.argv[2]
    s = Store(path)
    s.conn.execute("PRAGMA cache_size=8")  # tiny cache: uncommitted pages spill into the WAL file
    with s.transaction():
        for i in range(3000):
            s.upsert_checkpoint(Checkpoint(f"new{i}", None, "crash", i, f"fpn{i}", {"pad": "x" * 200}))
            s.put_features(f"fpn{i}", {"x": float(i), "y": -float(i)}, {"k": "v" * 50}, spec_hash="h")
            s.put_label(f"fpn{i}", "t", float(i), spec_hash="h")
        # Overwrite committed values too: the old ones must survive.
        s.put_features("fp-a", {"x": 999.0}, spec_hash="h")
        s.put_label("fp-a", "t", 999.0, spec_hash="h")
        sys.stdout.write("written\\n")
        sys.stdout.flush()
        if how == "exit":
            os._exit(1)
        time.sleep(60)
""")


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_crash_mid_transaction_leaves_previous_state(tmp_path, how):
    path = tmp_path / "s.db"
    with Store(path) as s:
        with s.transaction():
            s.upsert_checkpoint(_ck("a", run="r", step=1))
            s.upsert_checkpoint(_ck("b", run="r", step=2))
            s.put_features("fp-a", {"x": 1.0}, {"k": "a"}, spec_hash="h")
            s.put_features("fp-b", {"x": 2.0}, {"k": "b"}, spec_hash="h")
            s.put_label("fp-a", "t", 0.5, spec_hash="h")
        before_counts = s.counts()
        before_dump = list(s.conn.iterdump())

    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), how],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line == "written\n", proc.stderr.read()
        assert os.path.getsize(str(path) + "-wal") > 0  # the transaction really reached the disk
        if how == "sigkill":
            proc.send_signal(signal.SIGKILL)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == (1 if how == "exit" else -signal.SIGKILL)

    with Store(path) as s:
        assert s.conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert s.counts() == before_counts
        assert list(s.conn.iterdump()) == before_dump
        assert s.labels("t") == {"a": 0.5}
        assert s.feature_frame().numeric.tolist() == [[1.0], [2.0]]
        assert not math.isnan(s.feature_frame().numeric[0, 0])
        # The store is still writable after recovery.
        s.upsert_checkpoint(_ck("c"))
        assert s.counts()["checkpoints"] == before_counts["checkpoints"] + 1
