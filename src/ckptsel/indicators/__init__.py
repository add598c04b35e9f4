"""Pre-training indicators of checkpoints, computed from the weights and cached in the store.

``run_indicators(store, checkpoints, spec)`` computes, for each checkpoint, every indicator
of an :class:`~ckptsel.indicators.spec.IndicatorSpec` whose features are not yet stored under
(fingerprint, feature name, the indicator's spec hash), and stores them:

- ``ppl/<corpus>/{bits_per_byte,byte_perplexity,word_perplexity,token_perplexity}``
  (:mod:`.perplexity`, lm-eval's rolling log-likelihood);
- ``ppl_sc/<name>/{token_perplexity,bits_per_byte}`` (:mod:`.span_corruption`, PPL-SC);
- ``kshot/<task>/{acc,acc_norm}`` or ``kshot/<task>/exact_match`` (:mod:`.kshot`), with the
  per-example predictions of each metric stored under the feature's name (``kshot/<task>/acc``
  holds the ``acc`` picks). Stores written before that hold one ``kshot/<task>`` array (the
  ``acc`` picks); a rerun finds the per-metric ones missing and computes the unit again.

Window features: with ``average_window=K`` the same indicators are computed
on the parameter average of each checkpoint and its K−1 predecessors in its run (by step;
fewer at the start of a run) and stored as ``avg@K/<feature>``; with ``ensemble_window=K``, on
the ensemble of those K models (mean of their output probabilities per token), stored as
``ens@K/<feature>``. Their spec hash also covers the window's member fingerprints, so a
window that changes (a predecessor added later) is recomputed.

Jobs: the work is planned as one job per scoring model (a checkpoint, or one of its windows)
holding its missing units. Locally the jobs run here, in order, and each indicator is stored
as soon as it is computed. With a Ray executor (:mod:`ckptsel.executor`) each job is a Ray
task (:func:`score_job`) that returns its numbers; this process, the only writer, stores
each job's indicators in one transaction. Both paths run the same code on the same inputs.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ckptsel.errors import CkptselError
from ckptsel.indicators.spec import IndicatorSpec, Unit, load_spec
from ckptsel.store import Checkpoint, Store

__all__ = ["run_indicators", "IndicatorRun", "load_spec", "IndicatorSpec", "window_members"]


@dataclass
class IndicatorRun:
    """What a call computed: features stored per checkpoint id, units skipped as cached."""

    computed: dict[str, list[str]] = field(default_factory=dict)
    cached_units: int = 0
    computed_units: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        n_feat = sum(len(v) for v in self.computed.values())
        return (f"computed {self.computed_units} indicator(s) ({n_feat} features) for "
                f"{sum(1 for v in self.computed.values() if v)} checkpoint(s), {self.cached_units} already "
                f"stored, in {self.seconds:.1f}s")


def window_members(store: Store, ckpt: Checkpoint, k: int) -> list[Checkpoint]:
    """``ckpt`` and up to ``k − 1`` predecessors in its run, ordered by step (oldest first).

    A checkpoint without a run or step is its own window."""
    if k < 1:
        raise CkptselError(f"window size must be at least 1, not {k}")
    if ckpt.run is None or ckpt.step is None:
        return [ckpt]
    same_run = [c for c in store.checkpoints() if c.run == ckpt.run and c.step is not None and c.step <= ckpt.step]
    same_run.sort(key=lambda c: (c.step, c.id))
    return same_run[-k:]


@dataclass(frozen=True)
class _Job:
    """Units to compute for one scoring model, and how to store them: the model is the
    checkpoint itself (``kind="one"``), or the average or ensemble of ``paths`` (a window)."""

    fingerprint: str
    ckpt_id: str
    prefix: str  # "" | "avg@K/" | "ens@K/"
    units: tuple[tuple[Unit, str], ...]  # (unit, spec hash)
    kind: str = "one"  # "one" | "avg" | "ens"
    paths: tuple[str, ...] = ()
    member_ids: tuple[str, ...] = ()


def _missing(store: Store, fingerprint: str, units: Sequence[Unit], prefix: str, dtype_name: str,
             window: dict | None) -> tuple[list[tuple[Unit, str]], int]:
    todo, cached = [], 0
    for u in units:
        h = u.spec_hash(dtype=dtype_name, window=window)
        _register_spec(store, u, h, dtype_name, window)
        have = store.feature_names(fingerprint, h)
        done = all(prefix + n in have for n in u.feature_names) and all(
            store.has_predictions(fingerprint, prefix + t, h) for t in u.prediction_tasks)
        if done:
            cached += 1
        else:
            todo.append((u, h))
    return todo, cached


def _register_spec(store: Store, unit: Unit, h: str, dtype_name: str, window: dict | None) -> None:
    """Record what hash ``h`` means; a window's spec_id leaves out its member checkpoints, so a
    model trained on avg@K features reads them on every checkpoint."""
    flags = "" if window is None else f" --{'average' if window['kind'] == 'avg' else 'ensemble'}-window {window['k']}"
    prefix = "" if window is None else f"{window['kind']}@{window['k']}/"
    spec_id = h if window is None else unit.spec_hash(dtype=dtype_name, window={"kind": window["kind"], "k": window["k"]})
    store.put_spec(h, kind="indicator", spec_id=spec_id, name=f"{unit.spec_name}:{prefix}{unit.kind}/{unit.name}",
                   source=str(unit.spec_path), dtype=dtype_name,
                   command=f"ckptsel indicators {{ckpt}} --spec {unit.spec_path} --dtype {dtype_name}{flags}")


def _compute_unit(lm, unit: Unit, *, batch_size: int, progress: bool, label: str):
    """``(features without prefix, {prediction task without prefix: array} or None)`` of one
    indicator on one model."""
    from ckptsel.indicators.kshot import run_task
    from ckptsel.indicators.perplexity import corpus_perplexity
    from ckptsel.indicators.span_corruption import span_corruption_perplexity
    from ckptsel.indicators.spec import load_documents

    s = unit.settings
    if unit.kind == "ppl":
        docs = load_documents(s.path, s.max_documents)
        vals = corpus_perplexity(lm, docs, batch_size=batch_size, progress=progress,
                                 desc=f"{label} ppl/{unit.name}")
        return {f"ppl/{unit.name}/{k}": v for k, v in vals.items()}, None
    if unit.kind == "ppl_sc":
        docs = load_documents(s.path, s.max_documents)
        vals = span_corruption_perplexity(lm, docs, seed=s.seed, noise_density=s.noise_density,
                                          mean_span_length=s.mean_span_length, max_words=s.max_words,
                                          batch_size=batch_size, progress=progress,
                                          desc=f"{label} ppl_sc/{unit.name}")
        return {f"ppl_sc/{unit.name}/{k}": v for k, v in vals.items()}, None
    result = run_task(lm, s, batch_size=batch_size, progress=progress)
    return ({f"kshot/{unit.name}/{k}": v for k, v in result.metrics.items()},
            {f"kshot/{unit.name}/{k}": v for k, v in result.predictions.items()})


def _score(job: _Job, get_lm: Callable[[str], object], load: Callable[[str], object], *, batch_size: int,
           progress: bool) -> Iterator[tuple[dict, dict | None]]:
    """``(features with the job's prefix, predictions or None)`` of each unit of ``job``, in order.

    ``get_lm`` gives a checkpoint's model (maybe from a cache); ``load`` loads a fresh one."""
    label = f"{job.prefix}{job.ckpt_id}"
    if job.kind == "avg":
        from ckptsel.averaging import average_checkpoints

        with tempfile.TemporaryDirectory(prefix="ckptsel-avg-") as tmp:
            lm = load(str(average_checkpoints(list(job.paths), Path(tmp) / "average")))
            for unit, _h in job.units:
                feats, preds = _compute_unit(lm, unit, batch_size=batch_size, progress=progress, label=label)
                yield {job.prefix + k: v for k, v in feats.items()}, preds
            del lm
        return
    if job.kind == "ens":
        from ckptsel.indicators.lm import EnsembleLM

        lms = [get_lm(p) for p in job.paths]
        _check_same_tokenizer(lms, list(job.member_ids))
        lm = lms[0] if len(lms) == 1 else EnsembleLM(lms)
    else:
        lm = get_lm(job.paths[0])
    for unit, _h in job.units:
        feats, preds = _compute_unit(lm, unit, batch_size=batch_size, progress=progress, label=label)
        yield {job.prefix + k: v for k, v in feats.items()}, preds


def score_job(job: _Job, load: "_Loader", batch_size: int) -> list[tuple[dict, dict | None]]:
    """One executor job (a Ray task): every unit of ``job`` scored in this process and returned
    as ``[(features, predictions or None)]`` in unit order; the driver stores them."""
    return list(_score(job, load, load, batch_size=batch_size, progress=False))


def _store_unit(store: Store, job: _Job, unit: Unit, h: str, feats: dict, preds, report: IndicatorRun) -> None:
    """Write one unit's numbers (inside the caller's transaction)."""
    store.put_features(job.fingerprint, feats, spec_hash=h)
    for task, arr in (preds or {}).items():
        store.put_predictions(job.fingerprint, job.prefix + task, arr, spec_hash=h)
    report.computed.setdefault(job.ckpt_id, []).extend(feats)
    report.computed_units += 1


@dataclass(frozen=True)
class _Loader:
    """Loads a checkpoint directory as a scoring LM with one run's settings (picklable, so a
    Ray worker gets the driver's)."""

    dtype: object  # torch.dtype or "auto"
    device: object  # torch.device
    max_length: int | None
    threads: int | None
    allow_pickle: bool
    progress: bool

    def __call__(self, path: str):
        from transformers.utils import logging as hf_logging

        from ckptsel.checkpoints import load_model
        from ckptsel.indicators.lm import HFScoringLM

        bars = hf_logging.is_progress_bar_enabled()
        if not self.progress:
            hf_logging.disable_progress_bar()
        try:
            model, tok = load_model(path, allow_pickle=self.allow_pickle, dtype=self.dtype, device=self.device)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        return HFScoringLM(model, tok, max_length=self.max_length, threads=self.threads)


class _ModelCache:
    """Loaded models by path, keeping the most recent ``capacity`` (an ensemble window slides
    by one checkpoint, so K+1 slots load each model once per run)."""

    def __init__(self, loader: Callable[[str], object], capacity: int):
        self.loader, self.capacity = loader, max(1, capacity)
        self.items: dict[str, object] = {}

    def get(self, path: str):
        if path in self.items:
            self.items[path] = self.items.pop(path)
        else:
            self.items[path] = self.loader(path)
            while len(self.items) > self.capacity:
                self.items.pop(next(iter(self.items)))
        return self.items[path]


def _plan(store: Store, checkpoints: Sequence[Checkpoint], units: Sequence[Unit], dtype_name: str,
          average_window: int | None, ensemble_window: int | None, report: IndicatorRun) -> list[_Job]:
    """The jobs with missing units, in computing order (each checkpoint, then its windows);
    units already stored are counted in ``report.cached_units``."""
    jobs, planned = [], set()
    for c in checkpoints:
        todo, cached = _missing(store, c.fingerprint, units, "", dtype_name, None)
        report.cached_units += cached
        if todo:
            jobs.append(_Job(c.fingerprint, c.id, "", tuple(todo), "one", (c.path,), (c.id,)))
        for kind, k in (("avg", average_window), ("ens", ensemble_window)):
            if not k:
                continue
            members = window_members(store, c, k)
            window = {"kind": kind, "k": k, "members": [m.fingerprint for m in members]}
            todo, cached = _missing(store, c.fingerprint, units, f"{kind}@{k}/", dtype_name, window)
            report.cached_units += cached
            if not todo:
                continue
            missing = [m.id for m in members if not m.path or not Path(m.path).is_dir()]
            if missing:
                raise CkptselError(f"window of {c.id} needs {missing[0]}, which has no directory on disk; "
                                   "re-add it with `ckptsel add PATH`")
            jobs.append(_Job(c.fingerprint, c.id, f"{kind}@{k}/", tuple(todo), kind,
                             tuple(m.path for m in members), tuple(m.id for m in members)))
    unique = []
    for job in jobs:  # two ids with the same weights (fingerprint) need one computation
        key = (job.fingerprint, job.prefix, tuple(h for _u, h in job.units))
        if key in planned:
            report.cached_units += len(job.units)
        else:
            planned.add(key)
            unique.append(job)
    return unique


def _describe_job(job: _Job) -> str:
    if job.kind == "one":
        return f"{job.ckpt_id}: {len(job.units)} indicator(s) to compute"
    return f"{job.ckpt_id}: {len(job.units)} indicator(s) on the {job.kind} of {len(job.paths)} checkpoint(s)"


def run_indicators(store: Store, checkpoints: Sequence[Checkpoint], spec: IndicatorSpec, *,
                   device: str | None = None, dtype: str | None = None, batch_size: int | None = None,
                   average_window: int | None = None, ensemble_window: int | None = None,
                   progress: bool | None = None, allow_pickle: bool = False, threads: int | None = None,
                   log: Callable[[str], None] | None = None, executor=None) -> IndicatorRun:
    """Compute and store the spec's missing indicators for ``checkpoints`` (see module).

    ``threads``: intra-op CPU threads while scoring (default: one for models under 20M
    parameters, torch's default otherwise; 0: torch's default).

    ``executor``: ``None`` or a :class:`ckptsel.executor.LocalExecutor` computes here, one job
    after another, storing each indicator as it is computed. A
    :class:`ckptsel.executor.RayExecutor` runs one Ray task per job (a checkpoint, or one of its
    windows) with the spec's ``num_cpus``/``num_gpus``; the task returns its numbers and this
    process stores them, one transaction per job. Ray jobs run on ``device`` or, by default,
    on ``cuda`` when the spec asks for GPUs, else on ``cpu``.
    """
    from ckptsel.checkpoints import resolve_device_dtype

    start = time.perf_counter()
    progress = sys.stderr.isatty() if progress is None else progress
    log = log or (lambda msg: print(msg, file=sys.stderr))
    batch_size = batch_size or spec.batch_size
    units = spec.units()
    remote = executor is not None and executor.name != "local"
    if remote and device is None:  # where the workers will run, not where this driver runs
        device = "cuda" if spec.resources.num_gpus > 0 else "cpu"
    dev, torch_dtype = resolve_device_dtype(dtype, device)
    dtype_name = str(torch_dtype).replace("torch.", "")
    report = IndicatorRun()
    for k, what in ((average_window, "--average-window"), (ensemble_window, "--ensemble-window")):
        if k is not None and k < 1:
            raise CkptselError(f"{what} must be at least 1, not {k}")
    for c in checkpoints:
        if not c.path or not Path(c.path).is_dir():
            raise CkptselError(f"checkpoint {c.id} has no directory on disk ({c.path}); indicators need the "
                               "weights: add it with `ckptsel add PATH`")

    with store.transaction():  # the plan records every spec it meets: one commit, not one per unit
        jobs = _plan(store, checkpoints, units, dtype_name, average_window, ensemble_window, report)
    loader = _Loader(torch_dtype, dev, spec.max_length, threads, allow_pickle, progress)
    if not remote:
        cache = _ModelCache(loader, (ensemble_window or 1) + 1)
        for job in jobs:
            log(_describe_job(job))
            results = _score(job, cache.get, loader, batch_size=batch_size, progress=progress)
            for (unit, h), (feats, preds) in zip(job.units, results):
                with store.transaction():
                    _store_unit(store, job, unit, h, feats, preds, report)
    else:
        from ckptsel.executor import Job

        if jobs:
            log(f"{len(jobs)} job(s) to compute on Ray (num_cpus={spec.resources.num_cpus}, "
                f"num_gpus={spec.resources.num_gpus} each, device {dev.type})")
        remote_loader = dataclasses.replace(loader, progress=False)
        tasks = [Job(f"{j.prefix}{j.ckpt_id}", score_job, (j, remote_loader, batch_size), spec.resources)
                 for j in jobs]
        for task, results in executor.run(tasks):
            job = task.args[0]
            with store.transaction():  # the job's units together: a job is all or nothing
                for (unit, h), (feats, preds) in zip(job.units, results):
                    _store_unit(store, job, unit, h, feats, preds, report)
            log(f"{job.prefix}{job.ckpt_id}: stored {len(job.units)} indicator(s)")
    report.seconds = time.perf_counter() - start
    return report


def _check_same_tokenizer(lms, ids) -> None:
    ref = lms[-1].tokenizer.get_vocab()
    for lm, cid in zip(lms, ids):
        if lm.tokenizer.get_vocab() != ref:
            raise CkptselError(f"checkpoint {cid} has another tokenizer than {ids[-1]}; an ensemble needs one "
                               "vocabulary (use --average-window or check the run)")
