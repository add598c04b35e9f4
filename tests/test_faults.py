"""Faults that really happen, done for real: ``kill -9`` in the middle of ``ckptsel indicators``
and ``ckptsel finetune``, checkpoints deleted or truncated after ``ckptsel add``, a full disk
and a read-only workspace.

Every command runs as a real ``ckptsel`` process on real tiny checkpoints
(:func:`ckptsel.tiny.build_tiny_run`) and a real SQLite store. The store is compared by
dumping its rows (timestamps left out) with a separate read-only connection:

- after a kill and a rerun, it equals the store of an uninterrupted run, value for value;
- after a refused write (full disk, read-only file system), it equals the store before.

The full disk is a 2 MiB tmpfs filled up to a few pages, the read-only workspace the same
tmpfs remounted read-only; both need root with CAP_SYS_ADMIN (``mount``) and are skipped,
with the reason, where that is missing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ckptsel.checkpoints import add_checkpoints
from ckptsel.store import Store, storage_error

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "configs" / "indicators" / "tiny.yaml"
SFT_TASK = REPO / "configs" / "sft" / "tiny_mc.yaml"
TABLES = {  # the columns that make a row's content (no timestamps)
    "checkpoints": "id, path, run, step, fingerprint, metadata",
    "features": "fingerprint, name, kind, value, category, spec_hash",
    "labels": "fingerprint, target, value, std, n, spec_hash",
    "predictions": "fingerprint, task, spec_hash, dtype, data",
}


# -- helpers ----------------------------------------------------------------------------------
def ckptsel(ws: Path, *args: str, wait: bool = True):
    """``ckptsel --workspace ws ARGS`` as a real process (finished, or running when not ``wait``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CKPTSEL_HOME", "MLFLOW_TRACKING_URI")}
    env["OMP_NUM_THREADS"] = "1"  # tiny models; idle threads only spin on a shared machine
    cmd = [sys.executable, "-m", "ckptsel", "--workspace", str(ws), *args]
    if wait:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_only(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)


def dump(db: Path) -> dict[str, list[tuple]]:
    """Every row of every table, sorted, without timestamps."""
    with contextlib.closing(read_only(db)) as conn:
        return {t: sorted(conn.execute(f"SELECT {cols} FROM {t}").fetchall(), key=repr)
                for t, cols in TABLES.items()}


def check_integrity(db: Path) -> None:
    """``PRAGMA integrity_check`` is ok and no key has two rows."""
    with contextlib.closing(read_only(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        for table, key in (("features", "fingerprint, name, spec_hash"), ("labels", "fingerprint, target, spec_hash"),
                           ("predictions", "fingerprint, task, spec_hash")):
            dups = conn.execute(f"SELECT {key}, COUNT(*) FROM {table} GROUP BY {key} HAVING COUNT(*) > 1").fetchall()
            assert dups == [], f"duplicate {table} rows {dups[:3]}"


def poll(db: Path, sql: str) -> int:
    try:
        with contextlib.closing(read_only(db)) as conn:
            return conn.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:  # the writer holds a lock for a moment
        return 0


def kill_when(proc: subprocess.Popen, ready, what: str, timeout: float = 120.0) -> None:
    """SIGKILL ``proc`` as soon as ``ready()``; fail if it finished first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run finished (exit {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no cleanup, no atexit, no rollback by Python
    proc.communicate()
    assert proc.returncode == -9


def errors_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ckptsel: error:")]


def added_workspace(path: Path, *checkpoint_dirs) -> Path:
    """A workspace whose store has ``checkpoint_dirs`` added (what `ckptsel add` does)."""
    with Store(path / "ckptsel.db") as store:
        add_checkpoints(store, checkpoint_dirs)
    return path


@contextlib.contextmanager
def tmpfs(where: Path, size: str = "2m"):
    """A fresh tmpfs of ``size`` mounted at ``where`` (skip the test where mounting is not allowed)."""
    where.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); "
                    "this fault test needs root with CAP_SYS_ADMIN")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from ckptsel.tiny import build_tiny_run

    run = tmp_path_factory.mktemp("faults") / "run"
    build_tiny_run(run, steps=(100, 200, 300, 400))
    return run


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> Path:
    """configs/indicators/tiny.yaml with fewer documents and rows (the faults need the stages'
    structure, not their statistics), its data paths made absolute."""
    text = SPEC.read_text().replace("../../data/", f"{REPO}/data/")
    text = text.replace("max_documents: 8", "max_documents: 3").replace("limit: 12", "limit: 6")
    path = tmp_path_factory.mktemp("spec") / "faults.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def clean_indicators(run_dir, spec, tmp_path_factory):
    """An uninterrupted `ckptsel indicators` run over the four checkpoints, started now in the
    background; call the fixture's value to wait for it and get its workspace."""
    ws = added_workspace(tmp_path_factory.mktemp("clean-ind") / "ws", run_dir)
    proc = ckptsel(ws, "indicators", "--spec", str(spec), *IDS, "--no-progress", wait=False)

    def finished() -> Path:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        return ws

    yield finished
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


IDS = ("run@100", "run@200", "run@300", "run@400")
UNITS = "SELECT COUNT(*) FROM (SELECT DISTINCT fingerprint, spec_hash FROM features)"


# -- kill -9 ----------------------------------------------------------------------------------
def test_kill_9_in_indicators_then_rerun_equals_a_clean_run(run_dir, spec, clean_indicators, tmp_path):
    ws = added_workspace(tmp_path / "ws", run_dir)
    db = ws / "ckptsel.db"
    proc = ckptsel(ws, "indicators", "--spec", str(spec), *IDS, "--no-progress", wait=False)
    # 4 indicators per checkpoint, one transaction each: kill once the first checkpoint is done
    # and the second one is part-way.
    kill_when(proc, lambda: poll(db, UNITS) >= 5, "5 indicators were stored")
    check_integrity(db)
    done = poll(db, UNITS)

    clean = dump(clean_indicators() / "ckptsel.db")
    n_units = len({(fp, h) for fp, _, _, _, _, h in clean["features"]})
    assert n_units == 16 and 5 <= done < n_units
    # What was stored before the kill is already final: each row equals the clean run's.
    partial = dump(db)
    assert set(partial["features"]) <= set(clean["features"])
    assert set(partial["predictions"]) <= set(clean["predictions"])

    rerun = ckptsel(ws, "indicators", "--spec", str(spec), *IDS, "--no-progress", "--json")
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert (report["cached_units"], report["computed_units"]) == (done, n_units - done)
    check_integrity(db)
    assert dump(db) == clean


@pytest.fixture
def sft_task(tmp_path) -> Path:
    """configs/sft/tiny_mc.yaml scored by eval_loss (a real number per seed; the tiny models'
    accuracy is a plain 0 or 1), shorter, with its data paths made absolute."""
    text = SFT_TASK.read_text().replace("metric: acc", "metric: eval_loss").replace("max_steps: 30", "max_steps: 6")
    text = text.replace("../../data/", f"{REPO}/data/") + "eval_limit: 16\n"
    path = tmp_path / "tiny_mc_loss.yaml"
    path.write_text(text)
    return path


def test_kill_9_in_finetune_then_rerun_equals_a_clean_run(run_dir, sft_task, tmp_path):
    ckpts = [run_dir / f"checkpoint-{s}" for s in (100, 200)]
    ids = ("run@100", "run@200")
    args = ("finetune", *ids, "--task", str(sft_task), "--seeds", "0,1", "--no-progress", "--json")
    clean_ws = added_workspace(tmp_path / "clean", *ckpts)
    ws = added_workspace(tmp_path / "ws", *ckpts)
    db = ws / "ckptsel.db"
    clean = ckptsel(clean_ws, *args, wait=False)
    proc = ckptsel(ws, *args, wait=False)

    def seeds_done() -> int:
        return len(list((ws / "adapters").glob("*/*/seed*/result.json")))

    # One label per checkpoint after both its seeds: kill during the second checkpoint's second seed.
    kill_when(proc, lambda: seeds_done() >= 3, "three seeds finished")
    check_integrity(db)
    with contextlib.closing(read_only(db)) as conn:
        labels = conn.execute("SELECT n FROM labels").fetchall()
    assert len(labels) < len(ids) and all(n == 2 for (n,) in labels), f"a partial label: {labels}"
    labelled = len(labels)
    finished = {f: f.stat().st_mtime_ns for f in (ws / "adapters").glob("*/*/seed*/result.json")}

    rerun = ckptsel(ws, *args)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["skipped"] == list(ids[:labelled])
    assert [d["id"] for d in report["done"]] == list(ids[labelled:])
    assert {f: f.stat().st_mtime_ns for f in finished} == finished  # finished seeds are read back, not retrained
    out, err = clean.communicate(timeout=300)
    assert clean.returncode == 0, err
    check_integrity(db)
    after, reference = dump(db), dump(clean_ws / "ckptsel.db")
    assert len(reference["labels"]) == len(ids)
    assert all(math.isfinite(value) and n == 2 for _, _, value, _, n, _ in reference["labels"])
    assert after == reference


# -- checkpoints gone, corrupt or replaced after `add` ----------------------------------------
def test_deleted_truncated_and_replaced_checkpoints_are_named_and_the_others_finish(run_dir, spec, clean_indicators,
                                                                                  tmp_path):
    run = shutil.copytree(run_dir, tmp_path / "run")
    ws = added_workspace(tmp_path / "ws", run)
    shutil.rmtree(run / "checkpoint-200")
    truncated = run / "checkpoint-300" / "model.safetensors"
    os.truncate(truncated, truncated.stat().st_size // 2)
    # Other weights of the same size (a copy of step 100's): only the fingerprint tells.
    shutil.copyfile(run / "checkpoint-100" / "model.safetensors", run / "checkpoint-400" / "model.safetensors")

    r = ckptsel(ws, "indicators", "--spec", str(spec), *IDS, "--no-progress", "--json")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    errors = errors_of(r.stderr)
    assert len(errors) == 3, r.stderr
    assert "run@200" in errors[0] and str(run / "checkpoint-200") in errors[0] and "ckptsel add" in errors[0]
    assert "run@300" in errors[1] and str(truncated) in errors[1] and "truncated" in errors[1] \
        and "re-download" in errors[1]
    assert "run@400" in errors[2] and "changed since it was added" in errors[2] and "ckptsel add" in errors[2]
    report = json.loads(r.stdout)
    assert [e["id"] for e in report["errors"]] == ["run@200", "run@300", "run@400"]
    assert sorted(report["computed"]) == ["run@100"]

    # The good checkpoint's features are stored, equal to those of a clean run (the copy has the
    # same weights, so the same fingerprint); the bad ones have none.
    clean = dump(clean_indicators() / "ckptsel.db")
    with Store(ws / "ckptsel.db") as store:
        good = store.get_checkpoint("run@100").fingerprint
    stored = dump(ws / "ckptsel.db")["features"]
    assert stored and stored == [row for row in clean["features"] if row[0] == good]
    check_integrity(ws / "ckptsel.db")


# -- full disk, read-only workspace -----------------------------------------------------------
def fill(mount: Path) -> None:
    """Fill the file system at ``mount`` to the last byte."""
    with open(mount / "filler", "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while f.write(b"\0" * 4096):
                pass
    assert shutil.disk_usage(mount).free == 0


def test_full_disk_is_one_line_and_the_store_is_unchanged(run_dir, spec, tmp_path):
    with tmpfs(tmp_path / "mnt") as mnt:
        ws = added_workspace(mnt / "ws", run_dir / "checkpoint-100")
        before = dump(ws / "ckptsel.db")
        # A reader keeps the store open (a notebook, `ckptsel serve`), so SQLite's shared-memory
        # index and write-ahead log exist; then the disk fills to the last byte. The command
        # opens the store and computes; its first commit runs out of space.
        with contextlib.closing(sqlite3.connect(ws / "ckptsel.db")) as reader:
            reader.execute("SELECT COUNT(*) FROM checkpoints").fetchone()
            fill(mnt)
            r = ckptsel(ws, "indicators", "--spec", str(spec), "run@100", "--no-progress")
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        [error] = errors_of(r.stderr)
        assert error.startswith(f"ckptsel: error: no space left on the disk of {ws}")
        assert "(database or disk is full)" in error  # the store opened; its first commit failed
        assert "free space" in error and "--workspace" in error
        os.remove(mnt / "filler")
        check_integrity(ws / "ckptsel.db")
        assert dump(ws / "ckptsel.db") == before


def test_read_only_workspace_is_one_line_and_the_store_is_unchanged(run_dir, spec, tmp_path):
    with tmpfs(tmp_path / "mnt") as mnt:
        ws = added_workspace(mnt / "ws", run_dir / "checkpoint-100")
        before = dump(ws / "ckptsel.db")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        r = ckptsel(ws, "indicators", "--spec", str(spec), "run@100", "--no-progress")
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        [error] = errors_of(r.stderr)
        assert error.startswith(f"ckptsel: error: cannot write {ws}")
        assert "read-only file system" in error and "--workspace" in error
        subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
        check_integrity(ws / "ckptsel.db")
        assert dump(ws / "ckptsel.db") == before


@pytest.mark.parametrize("code, says", [
    (errno.ENOSPC, "no space left on the disk of {path}"),
    (errno.EDQUOT, "no space left on the disk of {path}"),
    (errno.EFBIG, "no space left on the disk of {path}"),
    (errno.EROFS, "cannot write {path}: read-only file system"),
    (errno.EACCES, "cannot access {path}: permission denied for user"),
])
def test_os_errors_become_one_line_errors_naming_the_path(tmp_path, code, says):
    path = tmp_path / "ws" / "models" / "m" / "booster.txt"
    err = storage_error(OSError(code, os.strerror(code), str(path)), tmp_path / "ws")
    assert str(err).startswith(says.format(path=path)) and "\n" not in str(err)
    assert "--workspace" in str(err)


def test_other_errors_are_left_alone(tmp_path):
    assert storage_error(OSError(errno.ENOENT, "No such file or directory", "x"), tmp_path) is None
    assert storage_error(ValueError("a bug"), tmp_path) is None
    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        with pytest.raises(sqlite3.OperationalError) as e:
            conn.execute("SELECT * FROM no_such_table")
    assert storage_error(e.value, tmp_path) is None
