"""Import lm-evaluation-harness result files as checkpoint features.

Both output layouts of lm-evaluation-harness (EleutherAI) are read:

- **0.3**: ``{"results": {task: {metric: value}}, "versions": {...},
  "config": {"model_args": "pretrained=...,revision=step1000", "num_fewshot": 0, ...}}``;
- **0.4**: ``{"results": {task: {"alias": ..., "acc,none": ..., "acc_stderr,none": ...}},
  "configs": {...}, "n-shot": {...}, "config": {"model_args": str or dict, ...}}``: metric keys
  are ``metric,filter``.

Each file is one checkpoint, identified by (run, step):

- step: ``revision=stepN`` in ``config.model_args`` (a string or a dict), else the file name
  ``..._stepN.json``; when both are present they must agree.
- run: ``--run`` when given, else the file's folder, or the folder above it when the folder
  names an evaluation setting (``zero-shot``, ``five-shot``, ``5shot``, ``5-shot``, ``fewshot``):
  ``pythia-evals/pythia-160m/zero-shot/160m_step1000.json`` and
  ``pythia-evals/pythia-160m/five-shot/160m-5shot_step1000.json`` both belong to run
  ``pythia-160m``, so one model at one step is one checkpoint, whatever the shot count.

A checkpoint already in the store with that run and step keeps its id and fingerprint (its
features from ``ckptsel add`` and ``indicators`` and these ones then sit side by side).
Otherwise a checkpoint ``<run>@<step>`` is created with fingerprint
``lmeval:<sha256("<run>@<step>")[:16]>`` (no weights to hash).

Features are ``lmeval/<task>/<metric>`` for zero-shot results and ``lmeval/<task>@<k>shot/<metric>``
for k-shot ones (k from ``n-shot`` in 0.4 files, ``config.num_fewshot`` in 0.3 ones), with spec
hash ``lmeval-import``. The filter suffix
``,none`` is dropped (``acc,none`` -> ``acc``); other filters stay in the name
(``exact_match,strict-match``). Standard errors (``*_stderr``) are not stored: they are the
harness's sampling uncertainty of the benchmark, not a property of the checkpoint (for
accuracies they are a function of the accuracy and the number of examples,
``sqrt(p(1-p)/(n-1))``), and storing them would double the feature count the predictor has to
sift through. Non-numeric entries (``alias``, ``"N/A"`` stderr) are skipped; NaN and infinity
are stored as missing values.

Every file is parsed and validated before anything is written, then all of them are written in
one transaction: a malformed file aborts the import with a one-line error naming it and leaves
the store unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ckptsel.errors import CkptselError
from ckptsel.store import Checkpoint, Store

IMPORT_SPEC = "lmeval-import"
FEATURE_PREFIX = "lmeval/"

_REVISION_STEP = re.compile(r"^step(\d+)$")
_REVISION_IN_ARGS = re.compile(r"(?:^|,)\s*revision\s*=\s*([^,]*)")
_PRETRAINED_IN_ARGS = re.compile(r"(?:^|,)\s*pretrained\s*=\s*([^,]*)")
_FILE_STEP = re.compile(r"(?:^|[_-])step(\d+)\.json$", re.IGNORECASE)
_SETTING_FOLDER = re.compile(r"^((zero|one|two|three|four|five|six|seven|eight|nine|ten|\d+)[-_ ]?shots?|few[-_]?shot)$",
                             re.IGNORECASE)


@dataclass(frozen=True)
class LmEvalResult:
    """One parsed results file: the checkpoint it describes and its numeric features."""

    path: Path
    run: str
    step: int
    layout: str  # "0.3" or "0.4"
    model: str | None  # config.model_args "pretrained", when given
    features: dict[str, float | None]


@dataclass
class LmEvalImportSummary:
    files: int
    checkpoints: int
    created: int
    existing: int
    features: int
    runs: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def describe(self) -> str:
        runs = ", ".join(f"{r} ({n})" for r, n in self.runs.items())
        return (f"imported {self.files} lm-eval result files as {self.checkpoints} checkpoints "
                f"({self.created} new, {self.existing} already in the store), {self.features} feature values, "
                f"in {self.seconds:.2f}s\nruns: {runs}")


def lmeval_fingerprint(run: str, step: int) -> str:
    """Fingerprint of a checkpoint known only from lm-eval results (no weights to hash)."""
    return "lmeval:" + hashlib.sha256(f"{run}@{step}".encode()).hexdigest()[:16]


def find_result_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, and every ``*.json`` under each directory (recursively), sorted."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*.json") if f.is_file())
            if not files:
                raise CkptselError(f"{p}: no *.json files under this directory; pass lm-eval result files "
                                   "or the folders that hold them")
            found += files
        elif p.is_file():
            found.append(p)
        else:
            raise CkptselError(f"{p}: no such file or directory")
    seen: set[Path] = set()
    unique = []
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def run_from_path(path: Path) -> str:
    """The default run of a results file: its folder, or the one above when the folder names an
    evaluation setting (``zero-shot``, ``five-shot``, ``5shot``, ...)."""
    parents = path.resolve().parent.parts
    if len(parents) >= 2 and _SETTING_FOLDER.match(parents[-1]):
        return parents[-2]
    return parents[-1]


def _shots(data: dict, task: str) -> int:
    """The few-shot count of ``task`` in a results file: ``n-shot`` (0.4), else ``config.num_fewshot`` (0.3)."""
    n_shot = data.get("n-shot")
    value = n_shot.get(task) if isinstance(n_shot, dict) else None
    if value is None and isinstance(data.get("config"), dict):
        value = data["config"].get("num_fewshot")
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _model_args(path: Path, config: object) -> dict[str, str]:
    if not isinstance(config, dict):
        return {}
    args = config.get("model_args")
    if isinstance(args, dict):
        return {str(k): str(v) for k, v in args.items() if v is not None}
    if isinstance(args, str):
        out = {}
        if m := _REVISION_IN_ARGS.search(args):
            out["revision"] = m[1].strip()
        if m := _PRETRAINED_IN_ARGS.search(args):
            out["pretrained"] = m[1].strip()
        return out
    if args is None:
        return {}
    raise CkptselError(f"{path}: config.model_args is a {type(args).__name__}; lm-eval writes a string "
                       "'k=v,...' or an object")


def _step(path: Path, args: dict[str, str]) -> int:
    from_revision = None
    if (m := _REVISION_STEP.match(args.get("revision", ""))):
        from_revision = int(m[1])
    from_name = int(m[1]) if (m := _FILE_STEP.search(path.name)) else None
    if from_revision is not None and from_name is not None and from_revision != from_name:
        raise CkptselError(f"{path}: config.model_args says revision=step{from_revision} but the file name says "
                           f"step{from_name}; fix one of them")
    step = from_revision if from_revision is not None else from_name
    if step is None:
        raise CkptselError(f"{path}: no training step: config.model_args has no revision=stepN and the file "
                           "name does not end in _stepN.json; rename the file to ..._stepN.json")
    return step


def parse_result_file(path: str | Path, *, run: str | None = None) -> LmEvalResult:
    """Parse one lm-evaluation-harness results file (0.3 or 0.4 layout); see the module doc."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as e:
        raise CkptselError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                           "fix or remove the file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CkptselError(f"{path}: cannot read it ({e}); fix or remove the file") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise CkptselError(f"{path}: not an lm-evaluation-harness results file (no 'results' object); "
                           "remove it or pass only result files")
    results: dict = data["results"]
    layout = "0.4" if ("configs" in data or "n-shot" in data or any(
        "," in k for m in results.values() if isinstance(m, dict) for k in m)) else "0.3"
    features: dict[str, float | None] = {}
    for task, metrics in results.items():
        if not isinstance(metrics, dict):
            raise CkptselError(f"{path}: results[{task!r}] is a {type(metrics).__name__}, not an object of "
                               "metrics; the file is not an lm-eval results file")
        for key, value in metrics.items():
            metric, _, filt = str(key).partition(",")
            if metric.endswith("_stderr") or metric == "alias":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # "N/A" stderr, nested objects
            shots = _shots(data, task)
            name = (f"{FEATURE_PREFIX}{task}{f'@{shots}shot' if shots else ''}/{metric}"
                    + (f",{filt}" if filt and filt != "none" else ""))
            features[name] = float(value) if math.isfinite(value) else None
    if not features:
        raise CkptselError(f"{path}: 'results' holds no numeric metrics; nothing to import from it")
    args = _model_args(path, data.get("config"))
    return LmEvalResult(path=path, run=run or run_from_path(path), step=_step(path, args), layout=layout,
                        model=args.get("pretrained"), features=features)


def import_lm_eval(store: Store, paths: Sequence[str | Path], *, run: str | None = None) -> LmEvalImportSummary:
    """Parse and validate every results file, then write all of them in one transaction."""
    t0 = time.perf_counter()
    if run is not None and not run.strip():
        raise CkptselError("--run is empty; give a run name or leave it out to name runs after the folders")
    parsed = [parse_result_file(f, run=run) for f in find_result_files(paths)]
    if not parsed:
        raise CkptselError("no lm-eval result files given")

    # Several files may describe one checkpoint (lm-eval 0.4 writes one file per invocation),
    # but they must not disagree on a metric.
    merged: dict[tuple[str, int], dict[str, float | None]] = {}
    source: dict[tuple[str, int, str], Path] = {}
    meta: dict[tuple[str, int], LmEvalResult] = {}
    for r in parsed:
        key = (r.run, r.step)
        feats = merged.setdefault(key, {})
        meta.setdefault(key, r)
        for name, value in r.features.items():
            if name in feats and feats[name] != value:
                first = source[(r.run, r.step, name)]
                raise CkptselError(f"{r.path} and {first} both give {name} of {r.run}@{r.step}, with different "
                                   "values; import them with different --run names")
            feats[name] = value
            source.setdefault((r.run, r.step, name), r.path)

    created = existing = 0
    with store.transaction():
        known = store.checkpoints()
        by_run_step = {}
        for c in known:
            by_run_step.setdefault((c.run, c.step), c)
        by_id = {c.id: c for c in known}
        for (run_, step), feats in merged.items():
            ckpt = by_run_step.get((run_, step))
            if ckpt is None:
                cid = f"{run_}@{step}"
                if cid in by_id:
                    other = by_id[cid]
                    raise CkptselError(f"checkpoint id {cid!r} is taken by a checkpoint of run {other.run!r} "
                                       f"step {other.step}; import with another --run")
                r = meta[(run_, step)]
                ckpt = Checkpoint(id=cid, path=None, run=run_, step=step, fingerprint=lmeval_fingerprint(run_, step),
                                  metadata={"source": "lm-eval", "model": r.model, "layout": r.layout})
                store.upsert_checkpoint(ckpt)
                created += 1
            else:
                existing += 1
            store.put_features(ckpt.fingerprint, feats, spec_hash=IMPORT_SPEC)
        store.put_spec(IMPORT_SPEC, kind="lm-eval", name="import-lm-eval",
                       command="ckptsel import-lm-eval RESULTS.json (lm-evaluation-harness results of {ckpt})")
    runs: dict[str, int] = {}
    for run_, _ in sorted(merged):
        runs[run_] = runs.get(run_, 0) + 1
    return LmEvalImportSummary(files=len(parsed), checkpoints=len(merged), created=created, existing=existing,
                               features=sum(len(f) for f in merged.values()), runs=runs,
                               seconds=time.perf_counter() - t0)
