"""Indicator specs: the YAML that names corpora, span-corruption settings and k-shot tasks.

A spec file (``configs/indicators/<NAME>.yaml``)::

    name: default
    max_length: null        # context window in tokens; null = the model's (lm-eval's rule)
    batch_size: 16          # sequences per forward pass, after length bucketing
    corpora:                # perplexity -> ppl/<name>/...
      - {name: stdlib, path: stdlib_docs, max_documents: null}
    span_corruption:        # PPL-SC -> ppl_sc/<name>/...
      - {name: stdlib, path: my/corpus.jsonl, noise_density: 0.15, mean_span_length: 3, seed: 0,
         max_documents: 200, max_words: 256}
    tasks:                  # k-shot tasks -> kshot/<task>/...
      - stdlib_mc
      - {path: ../../data/tasks/stdlib_cloze.yaml, limit: 20, num_fewshot: 3}   # overrides
    num_cpus: 1             # what one job (checkpoint) asks of a Ray cluster (--executor ray);
    num_gpus: 0             # not part of any hash: resources do not change the numbers

A ``path`` with neither ``/`` nor ``.`` in it names data shipped in the repository's ``data``
directory (:func:`shipped`): a corpus ``NAME`` is ``data/corpora/NAME.jsonl`` or, for
``zoo_<domain>``, ``data/zoo/indicators/<domain>.jsonl``; a task ``NAME`` is
``data/tasks/NAME.yaml`` or ``data/zoo/indicators/NAME.yaml``. Any other value is a file path,
relative to the spec file's directory, so a spec that names its data works wherever it is
copied. Both give the same spec hash (it covers the data's bytes, not where they were found).

Each indicator (one corpus, one span-corruption entry, one task) is a :class:`Unit` with its
own spec hash: ``ckptsel.store.spec_hash`` of its resolved settings, the SHA-256 of its data
files' bytes, the model dtype and :data:`ALGORITHM_VERSION`. Features are stored under
(checkpoint fingerprint, feature name, unit hash), so a rerun computes only the units whose
features are missing, and editing one task or corpus recomputes that unit only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptsel.errors import CkptselError
from ckptsel.executor import RESOURCE_KEYS, Resources, resources_from
from ckptsel.store import spec_hash

# Bump when an indicator's definition changes, so old numbers are never read as new ones.
ALGORITHM_VERSION = 1


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    path: Path
    max_documents: int | None = None


@dataclass(frozen=True)
class SpanCorruptionSpec:
    name: str
    path: Path
    noise_density: float = 0.15
    mean_span_length: float = 3.0
    seed: int = 0
    max_documents: int | None = 200
    max_words: int = 256


@dataclass(frozen=True)
class TaskSpec:
    """A k-shot task: JSONL rows plus the lm-eval style prompt settings (see ``kshot.py``)."""

    name: str
    type: str  # "multiple_choice" | "generate_until"
    test: Path
    fewshot: Path | None = None
    num_fewshot: int = 0
    fewshot_seed: int = 1234
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    until: tuple[str, ...] = ("\n",)
    max_gen_tokens: int = 32
    limit: int | None = None
    source: Path | None = None  # the task YAML


@dataclass(frozen=True)
class Unit:
    """One indicator of a spec: what to compute, the features it yields, and its hash."""

    kind: str  # "ppl" | "ppl_sc" | "kshot"
    name: str
    settings: Any  # CorpusSpec | SpanCorruptionSpec | TaskSpec
    feature_names: tuple[str, ...]
    prediction_tasks: tuple[str, ...]  # stored per-example predictions, one per metric (k-shot only)
    hash_input: dict = field(repr=False)
    spec_name: str = ""  # the spec file's name and path: what the store shows and the command to rerun
    spec_path: Path | None = None

    def spec_hash(self, *, dtype: str, window: dict | None = None) -> str:
        """The store's spec hash of this unit for a model dtype (and a window, if any)."""
        payload = dict(self.hash_input, dtype=dtype, version=ALGORITHM_VERSION)
        if window is not None:
            payload["window"] = window
        return spec_hash(payload)


@dataclass(frozen=True)
class IndicatorSpec:
    name: str
    path: Path | None
    max_length: int | None
    batch_size: int
    corpora: tuple[CorpusSpec, ...]
    span_corruption: tuple[SpanCorruptionSpec, ...]
    tasks: tuple[TaskSpec, ...]
    resources: Resources = Resources()

    def units(self) -> list[Unit]:
        """Every indicator of the spec, in the order they are computed."""
        common = {"max_length": self.max_length}
        out: list[Unit] = []
        for c in self.corpora:
            out.append(Unit(
                "ppl", c.name, c,
                tuple(f"ppl/{c.name}/{m}" for m in
                      ("bits_per_byte", "byte_perplexity", "word_perplexity", "token_perplexity")),
                (),
                {**common, "kind": "ppl", "max_documents": c.max_documents, "data": file_sha256(c.path)},
            ))
        for s in self.span_corruption:
            out.append(Unit(
                "ppl_sc", s.name, s,
                (f"ppl_sc/{s.name}/token_perplexity", f"ppl_sc/{s.name}/bits_per_byte"),
                (),
                {**common, "kind": "ppl_sc", "noise_density": s.noise_density,
                 "mean_span_length": s.mean_span_length, "seed": s.seed, "max_documents": s.max_documents,
                 "max_words": s.max_words, "data": file_sha256(s.path)},
            ))
        for t in self.tasks:
            metrics = ("acc", "acc_norm") if t.type == "multiple_choice" else ("exact_match",)
            names = tuple(f"kshot/{t.name}/{m}" for m in metrics)
            out.append(Unit(
                "kshot", t.name, t, names, names,
                {**common, "kind": "kshot", "type": t.type, "num_fewshot": t.num_fewshot,
                 "fewshot_seed": t.fewshot_seed, "target_delimiter": t.target_delimiter,
                 "fewshot_delimiter": t.fewshot_delimiter,
                 "until": list(t.until) if t.type == "generate_until" else None,
                 "max_gen_tokens": t.max_gen_tokens if t.type == "generate_until" else None,
                 "limit": t.limit, "test": file_sha256(t.test),
                 "fewshot": None if t.fewshot is None else file_sha256(t.fewshot)},
            ))
        out = [dataclasses.replace(u, spec_name=self.name, spec_path=self.path) for u in out]
        names = [n for u in out for n in u.feature_names]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise CkptselError(f"spec {self.path} names the same feature twice ({dupes[0]}); "
                               "give each corpus, span_corruption entry and task its own name")
        return out


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (of every ``*.txt`` file, by name, for a directory)."""
    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(path.glob("*.txt")):
            h.update(f.name.encode() + b"\0" + file_sha256(f).encode())
        return h.hexdigest()
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _FILE_HASHES:
        _FILE_HASHES[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _FILE_HASHES[key]


# -- loading ------------------------------------------------------------------------------------
def read_yaml_mapping(path: Path, what: str, hint: str) -> dict:
    """The YAML mapping in ``path``; one-line errors name ``what`` it is and the ``hint`` to fix it."""
    import yaml

    if not path.is_file():
        raise CkptselError(f"{what} {path} does not exist; {hint}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise CkptselError(f"{path} is not valid YAML ({str(e).splitlines()[0]}); fix the file") from e
    if not isinstance(data, dict):
        raise CkptselError(f"{what} {path} must hold a YAML mapping")
    return data


def data_dir() -> Path:
    """The repository's ``data`` directory (resolved from this file, like ``ckptsel.zoo.corpus.data_dir``)."""
    return Path(__file__).resolve().parents[3] / "data"


def shipped(kind: str) -> dict[str, Path]:
    """The shipped corpora (``kind="corpus"``) or k-shot tasks (``"task"``) by name (see module docstring)."""
    root = data_dir()
    zoo = root / "zoo" / "indicators"
    if kind == "corpus":
        out = {p.stem: p for p in sorted((root / "corpora").glob("*.jsonl"))}
        out.update({f"zoo_{p.stem}": p for p in sorted(zoo.glob("*.jsonl")) if "." not in p.stem})
        return out
    return {p.stem: p for d in (root / "tasks", zoo) for p in sorted(d.glob("*.yaml"))}


def _resolve_data(base: Path, value: Any, where: str, kind: str) -> Path:
    """A spec's corpus or task ``path``: a shipped name, else a path relative to ``base``."""
    if isinstance(value, str) and value and "/" not in value and "\\" not in value and "." not in value:
        names = shipped(kind)
        if value not in names:
            raise CkptselError(f"{where}: {value!r} is not a shipped {kind} (shipped: {', '.join(names) or 'none'}); "
                               f"name one of those or give a file path (./{value} for a file here)")
        return names[value].resolve()
    return _resolve(base, value, where)


def _resolve(base: Path, value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise CkptselError(f"{where}: 'path' must be a file path string")
    p = Path(value).expanduser()
    p = p if p.is_absolute() else (base / p)
    p = p.resolve()
    if not p.exists():
        raise CkptselError(f"{where}: {p} does not exist; fix the path (relative paths start at {base})")
    return p


def check_keys(entry: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise CkptselError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


def _opt_int(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CkptselError(f"{where} must be a positive integer or null, not {value!r}")
    return value


def load_task(path: Path) -> TaskSpec:
    """Read a task YAML (``name``, ``type``, ``test``, optional ``fewshot`` and prompt settings)."""
    path = Path(path).resolve()
    data = read_yaml_mapping(path, "task", "check the task path in the spec")
    where = f"task {path.name}"
    check_keys(data, {"name", "type", "test", "fewshot", "num_fewshot", "fewshot_seed", "target_delimiter",
                       "fewshot_delimiter", "until", "max_gen_tokens", "limit"}, where)
    kind = data.get("type")
    if kind not in ("multiple_choice", "generate_until"):
        raise CkptselError(f"{where}: type must be multiple_choice or generate_until, not {kind!r}")
    name = data.get("name") or path.stem
    num_fewshot = data.get("num_fewshot", 0)
    if not isinstance(num_fewshot, int) or num_fewshot < 0:
        raise CkptselError(f"{where}: num_fewshot must be a non-negative integer")
    until = data.get("until", ["\n"])
    if isinstance(until, str):
        until = [until]
    return TaskSpec(
        name=str(name), type=kind, test=_resolve(path.parent, data.get("test"), where),
        fewshot=None if data.get("fewshot") is None else _resolve(path.parent, data["fewshot"], where),
        num_fewshot=num_fewshot, fewshot_seed=int(data.get("fewshot_seed", 1234)),
        target_delimiter=str(data.get("target_delimiter", " ")),
        fewshot_delimiter=str(data.get("fewshot_delimiter", "\n\n")),
        until=tuple(str(u) for u in until), max_gen_tokens=int(data.get("max_gen_tokens", 32)),
        limit=_opt_int(data.get("limit"), f"{where}: limit"), source=path,
    )


def load_spec(path: str | Path) -> IndicatorSpec:
    """Read and validate an indicator spec; every path is resolved and must exist."""
    path = Path(path).expanduser().resolve()
    data = read_yaml_mapping(path, "indicator spec", "pass --spec configs/indicators/NAME.yaml")
    check_keys(data, {"name", "max_length", "batch_size", "corpora", "span_corruption", "tasks", *RESOURCE_KEYS},
               f"spec {path}")
    base = path.parent
    corpora = []
    for i, c in enumerate(data.get("corpora") or []):
        where = f"{path.name}: corpora[{i}]"
        if not isinstance(c, dict):
            raise CkptselError(f"{where} must be a mapping with name and path")
        check_keys(c, {"name", "path", "max_documents"}, where)
        corpora.append(CorpusSpec(str(c.get("name") or Path(c["path"]).stem),
                                  _resolve_data(base, c.get("path"), where, "corpus"),
                                  _opt_int(c.get("max_documents"), f"{where}: max_documents")))
    scs = []
    for i, s in enumerate(data.get("span_corruption") or []):
        where = f"{path.name}: span_corruption[{i}]"
        if not isinstance(s, dict):
            raise CkptselError(f"{where} must be a mapping with name and path")
        check_keys(s, {"name", "path", "noise_density", "mean_span_length", "seed", "max_documents",
                        "max_words"}, where)
        density = float(s.get("noise_density", 0.15))
        if not 0.0 < density < 1.0:
            raise CkptselError(f"{where}: noise_density must be in (0, 1), not {density}")
        scs.append(SpanCorruptionSpec(
            str(s.get("name") or Path(s["path"]).stem), _resolve_data(base, s.get("path"), where, "corpus"), density,
            float(s.get("mean_span_length", 3)), int(s.get("seed", 0)),
            _opt_int(s.get("max_documents", 200), f"{where}: max_documents"),
            _opt_int(s.get("max_words", 256), f"{where}: max_words") or 256,
        ))
    tasks = []
    for i, t in enumerate(data.get("tasks") or []):
        where = f"{path.name}: tasks[{i}]"
        if isinstance(t, dict):  # {path: TASK.yaml, limit: N, num_fewshot: K, fewshot_seed: S}
            check_keys(t, {"path", "limit", "num_fewshot", "fewshot_seed"}, where)
            task = load_task(_resolve_data(base, t.get("path"), where, "task"))
            overrides = {k: t[k] for k in ("limit", "num_fewshot", "fewshot_seed") if k in t}
            if "limit" in overrides:
                overrides["limit"] = _opt_int(overrides["limit"], f"{where}: limit")
            tasks.append(dataclasses.replace(task, **overrides))
        else:
            tasks.append(load_task(_resolve_data(base, t, where, "task")))
    if not (corpora or scs or tasks):
        raise CkptselError(f"spec {path} names no corpora, span_corruption or tasks; add at least one")
    batch_size = data.get("batch_size", 16)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise CkptselError(f"spec {path}: batch_size must be a positive integer")
    return IndicatorSpec(str(data.get("name") or path.stem), path,
                         _opt_int(data.get("max_length"), f"spec {path}: max_length"), batch_size,
                         tuple(corpora), tuple(scs), tuple(tasks), resources_from(data, f"spec {path}"))


# -- data files ---------------------------------------------------------------------------------
def load_documents(path: Path, max_documents: int | None = None) -> list[str]:
    """Documents of a corpus: the ``text`` field of each JSONL row, a ``.txt`` file as one
    document, or each ``*.txt`` file of a directory (sorted by name) as one document."""
    path = Path(path)
    if path.is_dir():
        docs = [f.read_text(encoding="utf-8") for f in sorted(path.glob("*.txt"))]
    elif path.suffix == ".jsonl":
        docs = []
        for i, row in enumerate(read_jsonl(path)):
            if not isinstance(row.get("text"), str):
                raise CkptselError(f"{path} line {i + 1} has no string 'text' field; corpora rows are "
                                   '{"text": "..."}')
            docs.append(row["text"])
    else:
        docs = [path.read_text(encoding="utf-8")]
    docs = [d for d in docs if d]
    if not docs:
        raise CkptselError(f"corpus {path} has no non-empty documents")
    return docs[:max_documents] if max_documents else docs


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CkptselError(f"{path} line {i + 1} is not valid JSON ({e.msg}); fix the file") from e
            if not isinstance(row, dict):
                raise CkptselError(f"{path} line {i + 1} is not a JSON object")
            rows.append(row)
    return rows
