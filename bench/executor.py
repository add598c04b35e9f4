"""Indicators of 8 tiny checkpoints: Ray on 2 CPUs against the local executor, same run.

Builds a run of 8 tiny checkpoints (``ckptsel.tiny.build_tiny_run``) in a temporary
directory, then computes ``configs/indicators/tiny.yaml`` on them twice into fresh stores:

- baseline: ``run_indicators`` with the local executor (this process, one after another);
- measured: the same with a ``RayExecutor`` on a local Ray started with ``num_cpus=2`` (one
  task per checkpoint, ``num_cpus=1`` each, so two run at once; ``max_calls=1``, so each job
  pays a fresh worker process that imports torch and transformers and loads its model).

Ray's start-up (``ray.init``) is timed apart and not in the ratio. A third run reuses Ray
workers (``max_calls=0``: what CPU-only jobs could do) to show how much of the cost is the
fresh process per job. Ray's per-job overhead is
measured two ways: the wall time of ``--noop`` empty jobs through the same executor divided
by their number (scheduling plus a fresh worker process, without torch), and
``(ray wall − local wall) × 2 / 8`` (the extra time each job costs a CPU slot, since two
run at once). The two stores must hold the same numbers (checked). Prints
``RATIO ray/local = R``; on one small machine Ray costs more than it gains: the point of Ray is
many machines and GPUs, and this ratio is its price at the smallest scale.

    .venv/bin/python bench/executor.py [--checkpoints 8] [--noop 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "configs" / "indicators" / "tiny.yaml"


def _noop(i: int) -> int:
    return i


def _dump(db: Path):
    con = sqlite3.connect(db)
    try:
        return (con.execute("SELECT fingerprint, name, spec_hash, value FROM features ORDER BY 1, 2, 3").fetchall(),
                con.execute("SELECT fingerprint, task, spec_hash, data FROM predictions ORDER BY 1, 2, 3").fetchall())
    finally:
        con.close()


def _indicators(root: Path, dirs, executor) -> float:
    from ckptsel.checkpoints import add_checkpoints
    from ckptsel.indicators import load_spec, run_indicators
    from ckptsel.store import Store

    with Store(root / "ckptsel.db") as store:
        ckpts = add_checkpoints(store, [str(d) for d in dirs], run="bench")
        start = time.perf_counter()
        report = run_indicators(store, ckpts, load_spec(SPEC), progress=False, log=lambda m: None,
                                executor=executor)
        wall = time.perf_counter() - start
    assert report.computed_units == 4 * len(dirs), report.describe()
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoints", type=int, default=8)
    ap.add_argument("--noop", type=int, default=8, help="empty jobs timed to measure Ray's per-job overhead")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import ray

    from ckptsel.executor import Job, LocalExecutor, RayExecutor
    from ckptsel.tiny import build_tiny_run

    tmp = Path(tempfile.mkdtemp(prefix="ckb-"))
    try:
        print(f"building {args.checkpoints} tiny checkpoints ...", file=sys.stderr)
        dirs = build_tiny_run(tmp / "run", steps=range(1, args.checkpoints + 1), updates_per_checkpoint=1)
        print("local executor ...", file=sys.stderr)
        local = _indicators(tmp / "local", dirs, LocalExecutor())
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=str(tmp / "ray"))
        init = time.perf_counter() - start
        try:
            with RayExecutor() as ex:
                print("ray executor ...", file=sys.stderr)
                ray_wall = _indicators(tmp / "ray", dirs, ex)
                start = time.perf_counter()
                list(ex.run([Job(f"noop{i}", _noop, (i,)) for i in range(args.noop)]))
                noop = time.perf_counter() - start
            with RayExecutor(max_calls=0) as ex:
                print("ray executor, workers reused (max_calls=0) ...", file=sys.stderr)
                reuse_wall = _indicators(tmp / "reuse", dirs, ex)
        finally:
            ray.shutdown()
        same = _dump(tmp / "local" / "ckptsel.db") == _dump(tmp / "ray" / "ckptsel.db") \
            == _dump(tmp / "reuse" / "ckptsel.db")
        n = args.checkpoints
        out = {
            "checkpoints": n, "jobs": n, "ray_cpus": 2, "local_s": round(local, 2), "ray_s": round(ray_wall, 2),
            "ray_init_s": round(init, 2), "ratio_ray_local": round(ray_wall / local, 3),
            "noop_jobs": args.noop, "noop_wall_per_job_s": round(noop / args.noop, 3),
            "ray_minus_local_per_job_slot_s": round((ray_wall - local) * 2 / n, 3),
            "local_per_job_s": round(local / n, 3), "stores_equal": same,
            "ray_reuse_workers_s": round(reuse_wall, 2), "ratio_ray_reuse_local": round(reuse_wall / local, 3),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"local: {out['local_s']:.1f}s for {n} jobs ({out['local_per_job_s']:.2f}s/job); "
              f"ray (2 CPUs): {out['ray_s']:.1f}s, plus ray.init {out['ray_init_s']:.1f}s; stores equal: {same}")
        print(f"Ray per-job overhead: {out['noop_wall_per_job_s']:.2f}s wall per empty job ({args.noop} jobs); "
              f"(ray - local) x 2 CPUs / jobs = {out['ray_minus_local_per_job_slot_s']:.2f}s per job")
        print(f"ray with workers reused (max_calls=0, CPU-only jobs): {out['ray_reuse_workers_s']:.1f}s, "
              f"ratio {out['ratio_ray_reuse_local']:.2f}")
        print(f"RATIO ray/local = {out['ratio_ray_local']:.2f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
