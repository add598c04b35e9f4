"""The Ray executor on a real local Ray cluster (2 CPUs, no dashboard, temp dir under tmp).

The reference for every number is the local executor: the store after a Ray run must equal
the store after a local run, value for value (features, per-example predictions, labels).
Ray (>= 2.52) writes a token for its token authentication to ``~/.ray/auth_token`` the first
time a cluster starts; later clusters reuse it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from ckptsel.errors import CkptselError
from ckptsel.executor import Job, RayExecutor, Resources, make_executor, resources_from

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "configs" / "indicators" / "tiny.yaml"


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """One real local Ray for the module; its temp dir is under tmp unless that path is too
    long for Ray's unix sockets (~107 characters), then a short mkdtemp removed afterwards."""
    base = tmp_path_factory.mktemp("ray")
    short = len(str(base)) <= 40
    temp_dir = str(base) if short else tempfile.mkdtemp(prefix="ckr-")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if not short:
            shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    from ckptsel.tiny import build_tiny_run

    return build_tiny_run(tmp_path_factory.mktemp("ck") / "run", steps=(1, 2), updates_per_checkpoint=2)


def _new_store(root: Path, dirs):
    from ckptsel.checkpoints import add_checkpoints
    from ckptsel.store import Store

    store = Store(root / "ckptsel.db")
    ckpts = add_checkpoints(store, [str(d) for d in dirs], run="r")
    return store, sorted(ckpts, key=lambda c: c.step)


def _dump(db: Path) -> dict:
    """Every stored number, keyed as the store keys it (timestamps left out)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {
            "features": con.execute("SELECT fingerprint, name, spec_hash, kind, value, category FROM features "
                                    "ORDER BY 1, 2, 3").fetchall(),
            "predictions": con.execute("SELECT fingerprint, task, spec_hash, dtype, data FROM predictions "
                                       "ORDER BY 1, 2, 3").fetchall(),
            "labels": con.execute("SELECT fingerprint, target, spec_hash, value, std, n FROM labels "
                                  "ORDER BY 1, 2, 3").fetchall(),
        }
    finally:
        con.close()


@pytest.fixture(scope="module")
def local_indicators(run_dirs, tmp_path_factory):
    """The reference: a local run on the second checkpoint, plain and ens@2 (both checkpoints)."""
    from ckptsel.indicators import load_spec, run_indicators

    root = tmp_path_factory.mktemp("local")
    store, ckpts = _new_store(root, run_dirs)
    with store:
        run_indicators(store, ckpts[1:], load_spec(SPEC), ensemble_window=2, progress=False, log=lambda m: None)
    return _dump(root / "ckptsel.db")


def _die_once_then_run(marker: str, attempts: str, fn, args, kwargs):
    """Run ``fn``; the first call of all (the one that creates ``marker``) SIGKILLs its own
    worker process 1 s after starting, while the job is loading or scoring, and never returns."""
    with open(attempts, "a") as f:
        f.write(f"start {os.getpid()}\n")
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        first = True
    except FileExistsError:
        first = False
    if first:
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGKILL)).start()
    result = fn(*args, **kwargs)
    while first:  # finished within the second: the kill still comes before any result is returned
        time.sleep(0.1)
    with open(attempts, "a") as f:
        f.write(f"end {os.getpid()}\n")
    return result


class _KillOneWorker:
    """A Ray executor whose first job to start kills its own worker mid-job (test only)."""

    name = "ray"

    def __init__(self, tmp: Path):
        self.inner, self.marker, self.attempts = RayExecutor(max_retries=2), tmp / "killed", tmp / "attempts"

    def run(self, jobs):
        by_key = {j.key: j for j in jobs}
        wrapped = [dataclasses.replace(j, fn=_die_once_then_run, kwargs={},
                                       args=(str(self.marker), str(self.attempts), j.fn, j.args, j.kwargs))
                   for j in jobs]
        for job, result in self.inner.run(wrapped):
            yield by_key[job.key], result


def test_ray_store_equals_local_after_a_worker_is_killed(ray_cluster, run_dirs, local_indicators, tmp_path):
    from ckptsel.indicators import load_spec, run_indicators

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this file
    store, ckpts = _new_store(tmp_path, run_dirs)
    with store:
        report = run_indicators(store, ckpts[1:], load_spec(SPEC), ensemble_window=2, progress=False,
                                log=lambda m: None, executor=_KillOneWorker(tmp_path))
        assert report.computed_units == 4 * 2  # 4 units x (the checkpoint, the ensemble of both)
        with RayExecutor() as ex:
            again = run_indicators(store, ckpts[1:], load_spec(SPEC), ensemble_window=2, progress=False,
                                   log=lambda m: None, executor=ex)
    assert (again.computed_units, again.cached_units) == (0, 8)  # stored jobs are not resubmitted
    assert ray.is_initialized()  # a Ray the executor did not start is left running

    lines = (tmp_path / "attempts").read_text().split()
    events = list(zip(lines[::2], lines[1::2]))
    starts = [pid for e, pid in events if e == "start"]
    ends = [pid for e, pid in events if e == "end"]
    assert len(starts) == 3 and len(ends) == 2  # two jobs, one of them run twice
    assert len(set(starts)) == 3  # every attempt in its own worker process (max_calls=1)
    killed = (set(starts) - set(ends)).pop()
    with pytest.raises(ProcessLookupError):
        os.kill(int(killed), 0)

    got = _dump(tmp_path / "ckptsel.db")
    assert len(got["features"]) == 2 * (4 + 2 + 2 + 1) and len(got["predictions"]) == 2 * (2 + 1)  # per metric: acc, acc_norm; exact_match
    assert got == local_indicators


def _raise_for(x):
    if x == 2:
        raise CkptselError("checkpoint two is broken; re-add it")
    return x * 10


def test_job_errors_do_not_lose_the_other_results(ray_cluster):
    jobs = [Job(f"j{i}", _raise_for, (i,), Resources(num_cpus=1)) for i in range(1, 4)]
    got = {}
    with RayExecutor() as ex, pytest.raises(CkptselError, match=r"^checkpoint two is broken; re-add it$"):
        for job, result in ex.run(jobs):
            got[job.key] = result
    assert got == {"j1": 10, "j3": 30}
    with make_executor("local") as local, pytest.raises(CkptselError):
        list(local.run(jobs))


def test_cli_ray_finetune_joins_the_cluster_and_labels_equal_local(ray_cluster, run_dirs, tmp_path):
    """`ckptsel finetune --executor ray --ray-address ADDR` in a subprocess joins this module's
    cluster (as a team joins a shared one); its labels equal an in-process local run's."""
    from ckptsel import finetune as ft

    task_yaml = tmp_path / "mc.yaml"
    text = (ROOT / "configs" / "sft" / "tiny_mc.yaml").read_text().replace("max_steps: 30", "max_steps: 4")
    task_yaml.write_text(text.replace("../../data", str(ROOT / "data")) + "num_cpus: 1\nnum_gpus: 0\n")
    store, ckpts = _new_store(tmp_path / "local", run_dirs[1:])
    with store:
        report = ft.run_finetune(store, ckpts, ft.load_task(task_yaml), workspace=tmp_path / "local",
                                 seeds=[0, 1], progress=False)
    assert [d["n"] for d in report.done] == [2]

    env = {**os.environ, "CKPTSEL_HOME": str(tmp_path / "ray")}
    out = subprocess.run([sys.executable, "-m", "ckptsel", "finetune", str(run_dirs[1]), "--task", str(task_yaml),
                          "--seeds", "0,1", "--executor", "ray", "--ray-address", ray_cluster, "--no-progress",
                          "--json"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    got = _dump(tmp_path / "ray" / "ckptsel.db")
    assert len(got["labels"]) == 1 and got["labels"][0][5] == 2
    assert got == _dump(tmp_path / "local" / "ckptsel.db")
    assert len(list((tmp_path / "ray" / "adapters").rglob("result.json"))) == 2  # written by the workers


def test_resources_from_yaml_and_not_hashed(tmp_path):
    from ckptsel.indicators.spec import load_spec

    assert resources_from({}, "x") == Resources(1, 0)
    assert resources_from({"num_cpus": 2, "num_gpus": 0.5}, "x") == Resources(2, 0.5)
    for bad in ({"num_gpus": -1}, {"num_cpus": "two"}, {"num_gpus": True}, {"num_gpus": 1.5}):
        with pytest.raises(CkptselError, match=r"^x: num_[cg]pus"):
            resources_from(bad, "x")
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.read_text().replace("../../data", str(ROOT / "data")) + "num_cpus: 2\nnum_gpus: 1\n")
    with_res, plain = load_spec(spec), load_spec(SPEC)
    assert with_res.resources == Resources(2, 1)
    assert [u.spec_hash(dtype="float32") for u in with_res.units()] == \
           [u.spec_hash(dtype="float32") for u in plain.units()]
    spec.write_text(SPEC.read_text() + "num_gpu: 1\n")
    with pytest.raises(CkptselError, match="unknown key 'num_gpu'"):
        load_spec(spec)


def test_cli_executor_flags_and_local_path_imports_no_ray(run_dirs, tmp_path, capsys):
    from ckptsel.cli import main

    code = main(["indicators", str(run_dirs[0]), "--spec", str(SPEC), "--ray-address", "auto",
                 "--workspace", str(tmp_path / "ws")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--executor ray" in err
    probe = ("import sys; from ckptsel.executor import make_executor, Job; import ckptsel.cli, ckptsel.finetune, "
             "ckptsel.indicators; ex = make_executor('local'); "
             "assert [r for _, r in ex.run([Job('a', abs, (-3,))])] == [3]; assert 'ray' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", probe]).returncode == 0
