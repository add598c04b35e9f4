"""Checkpoints on disk: discovery, validation, fingerprints, registration and safe loading.

A **checkpoint directory** has a ``config.json`` and its weights as ``model.safetensors``, or
as shards ``model-0000i-of-0000n.safetensors`` listed in ``model.safetensors.index.json``.
A **run directory** has checkpoint subdirectories named ``checkpoint-<N>`` (HF Trainer),
``step<N>``, ``step-<N>`` or ``global_step<N>``; other subdirectories are ignored, and so is
a final model saved at the top of a Trainer output directory next to its ``checkpoint-<N>``
folders. The step comes from the directory name, else from ``trainer_state.json``
(``global_step``).

**Fingerprint** (:func:`weights_fingerprint`): SHA-256 over the weight files, the whole of each
file (safetensors header and tensor data), in order of file name; each file contributes its
name (UTF-8), a NUL byte, its size as 8 little-endian bytes, then its bytes. The fingerprint
is ``"sha256:"`` and the first 32 hex digits. Changing any weight, dtype, tensor name or the
sharding gives a new fingerprint, so a changed checkpoint never inherits the features stored
for its old weights; ``config.json`` and tokenizer files are not hashed.
Cost: every byte is read once, in 8 MB blocks (SHA-256 uses the CPU's SHA extensions through
OpenSSL). Measured on the shared 2-core build machine with a 2.1 GB safetensors file: 1.6-3.2 s
from the page cache (0.7-1.3 GB/s, depending on load), 4.4-6.8 s from disk (cache dropped
with ``posix_fadvise``). Reading the headers for validation and metadata costs < 1 ms.

**Loading** (:func:`load_model`) is safe by default: safetensors only (pickled ``.bin`` files
run code when unpickled, so they are refused unless ``allow_pickle``), ``trust_remote_code``
is always off, and files are only read locally.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ckptsel.errors import CkptselError
from ckptsel.store import Checkpoint, Store

SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_STEP_DIR = re.compile(r"^(?:checkpoint-|step-?|global_step)(\d+)$")
_HASH_BLOCK = 8 << 20
# Bytes per element of each safetensors dtype (the format's spec, huggingface/safetensors).
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2,
                "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_DTYPE_NAMES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
                "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn", "I8": "int8", "U8": "uint8",
                "I16": "int16", "I32": "int32", "I64": "int64", "BOOL": "bool"}


@dataclass
class CheckpointDir:
    """A checkpoint found on disk, validated, before it is registered."""

    path: Path
    step: int | None
    weight_files: list[Path]
    format: str  # "safetensors" or "pickle"
    metadata: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name


# -- discovery --------------------------------------------------------------------------------
def step_from_name(name: str) -> int | None:
    """The step in ``checkpoint-<N>``, ``step<N>``, ``step-<N>`` or ``global_step<N>``, else None."""
    m = _STEP_DIR.match(name)
    return int(m[1]) if m else None


def step_of(path: Path) -> int | None:
    """A checkpoint's step: from its directory name, else ``trainer_state.json``'s ``global_step``."""
    step = step_from_name(path.name)
    if step is not None:
        return step
    state = path / "trainer_state.json"
    if state.is_file():
        try:
            value = json.loads(state.read_text()).get("global_step")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise CkptselError(f"{state} is not valid JSON ({e}); fix or delete it") from e
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _step_subdirs(path: Path) -> list[Path]:
    subs = [p for p in path.iterdir() if p.is_dir() and step_from_name(p.name) is not None]
    return sorted(subs, key=lambda p: (step_from_name(p.name), p.name))


def discover(path: str | Path) -> tuple[str | None, list[Path]]:
    """``(run_name, checkpoint_dirs)`` for a checkpoint or run directory.

    A directory with ``config.json`` is a checkpoint, unless it also has step-named
    subdirectories holding a ``config.json`` (a Trainer output directory): then it is a run.
    The run name is the run directory's name, or for a single checkpoint with a step-named
    directory, its parent's name; None otherwise.
    """
    path = Path(path).expanduser().resolve()
    if path.is_file():
        raise CkptselError(f"{path} is a file; pass the checkpoint directory that holds it (with config.json) "
                           "or a run directory of checkpoint-<N> folders")
    if not path.is_dir():
        raise CkptselError(f"{path}: no such directory; pass a checkpoint directory (with config.json) "
                           "or a run directory of checkpoint-<N> folders")
    subs = _step_subdirs(path)
    if (path / "config.json").is_file() and not any((s / "config.json").is_file() for s in subs):
        run = path.parent.name if step_from_name(path.name) is not None else None
        return run, [path]
    if subs:
        return path.name, subs
    raise CkptselError(f"{path} is not a checkpoint (no config.json) nor a run directory (no "
                       "checkpoint-<N>, step<N>, step-<N> or global_step<N> subdirectories)")


# -- validation -------------------------------------------------------------------------------
def read_safetensors_header(file: Path) -> dict:
    """The JSON header of a safetensors file, checked against the file size without reading tensors.

    Format (huggingface/safetensors): 8 bytes little-endian header length ``n``, ``n`` bytes of
    JSON mapping tensor names to ``{dtype, shape, data_offsets: [begin, end]}`` (offsets into
    the data that follows the header), then the data. Checks: the header fits in the file, is
    a JSON object, every tensor's offsets lie within the data and span ``prod(shape) * itemsize``
    bytes, and the data is exactly as long as the last tensor ends (a truncated or padded
    file fails).
    """
    size = file.stat().st_size
    where = f"{file} is truncated or corrupt"
    if size < 8:
        raise CkptselError(f"{where}: {size} bytes, shorter than the 8-byte header length; re-save or re-download it")
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8 or n > 100 << 20:
            raise CkptselError(f"{where}: header of {n} bytes does not fit in {size} bytes; "
                               "re-save or re-download it")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CkptselError(f"{where}: header is not JSON ({e}); re-save or re-download it") from e
    if not isinstance(header, dict):
        raise CkptselError(f"{where}: header is not a JSON object; re-save or re-download it")
    data_size = size - 8 - n
    end_max = 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in t["data_offsets"])
            numel = math.prod(int(d) for d in t["shape"])
            itemsize = _DTYPE_BYTES.get(t["dtype"])
        except (KeyError, TypeError, ValueError) as e:
            raise CkptselError(f"{where}: bad header entry for tensor {name!r}; re-save or re-download it") from e
        if not 0 <= begin <= end <= data_size:
            raise CkptselError(f"{where}: tensor {name!r} spans bytes {begin}-{end} of {data_size} bytes of data; "
                               "re-save or re-download it")
        if itemsize is not None and end - begin != numel * itemsize:
            raise CkptselError(f"{where}: tensor {name!r} has {end - begin} bytes for shape {t['shape']} "
                               f"of {t['dtype']}; re-save or re-download it")
        end_max = max(end_max, end)
    if end_max != data_size:
        raise CkptselError(f"{where}: tensors end at byte {end_max} of {data_size} bytes of data; "
                           "re-save or re-download it")
    return header


def _index_files(path: Path, index_name: str) -> list[Path]:
    index = path / index_name
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CkptselError(f"{index} is not a valid shard index ({e}); re-save the checkpoint") from e
    missing = [n for n in names if not (path / n).is_file()]
    if missing:
        raise CkptselError(f"checkpoint {path} is missing shard {missing[0]} listed in {index_name} "
                           f"({len(missing)} of {len(names)} missing); copy the checkpoint again")
    return [path / n for n in names]


def weight_files(path: Path, *, allow_pickle: bool = False) -> tuple[str, list[Path]]:
    """``(format, files)`` of a checkpoint's weights: safetensors first, pickled ``.bin`` if allowed."""
    if (path / SAFETENSORS_INDEX).is_file():
        return "safetensors", _index_files(path, SAFETENSORS_INDEX)
    if (path / "model.safetensors").is_file():
        return "safetensors", [path / "model.safetensors"]
    bins = [path / "pytorch_model.bin"] if (path / "pytorch_model.bin").is_file() else \
        _index_files(path, PICKLE_INDEX) if (path / PICKLE_INDEX).is_file() else []
    if bins and allow_pickle:
        return "pickle", bins
    if bins:
        raise CkptselError(f"checkpoint {path} has no model.safetensors; ckptsel loads safetensors only "
                           "(pass --allow-pickle to trust .bin files)")
    raise CkptselError(f"checkpoint {path} has no weights (no model.safetensors, no {SAFETENSORS_INDEX}); "
                       "save it with model.save_pretrained(DIR)")


def load_config(path: Path):
    """The checkpoint's ``transformers`` config, never running code shipped with the checkpoint."""
    if not (path / "config.json").is_file():
        raise CkptselError(f"{path} is not a checkpoint (no config.json); "
                           "pass a directory saved with save_pretrained, or a run directory")
    try:
        raw = json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CkptselError(f"{path}/config.json is not valid JSON ({e}); re-save the checkpoint") from e
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES:
        remote = " (it ships its own code, and ckptsel never runs remote code)" \
            if isinstance(raw, dict) and "auto_map" in raw else ""
        raise CkptselError(f"checkpoint {path} has model_type {model_type!r}, an architecture transformers "
                           f"{transformers.__version__} does not know{remote}; upgrade transformers or "
                           "convert the checkpoint to a known architecture")
    try:
        return AutoConfig.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
    except (ValueError, KeyError, TypeError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CkptselError(f"checkpoint {path}: transformers cannot read its config.json ({first}); "
                           "re-save the checkpoint with a current transformers") from e


def has_tokenizer(path: Path) -> bool:
    return any((path / f).is_file() for f in TOKENIZER_FILES)


def _architecture(config) -> dict:
    text = config.get_text_config()
    archs = getattr(config, "architectures", None) or [None]
    return {
        "architecture": archs[0],
        "model_type": config.model_type,
        "hidden_size": getattr(text, "hidden_size", None),
        "num_layers": getattr(text, "num_hidden_layers", None),
        "vocab_size": getattr(text, "vocab_size", None),
    }


_SHAPE_KEYS = ("model_type", "hidden_size", "num_layers", "vocab_size")


def _shape(meta: dict) -> str:
    return ", ".join(f"{k.replace('_size', '').replace('num_', '')} {meta.get(k)}" for k in _SHAPE_KEYS)


def _pickle_tensor_stats(files: Sequence[Path]) -> tuple[int, Counter]:
    import torch

    n, by_dtype = 0, Counter()
    for f in files:
        try:
            state = torch.load(f, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:  # torch raises many types for a bad pickle
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CkptselError(f"{f} is not a readable PyTorch weights file ({first}); "
                               "re-save the checkpoint as safetensors") from e
        for t in state.values():
            n += t.numel()
            by_dtype[str(t.dtype).removeprefix("torch.")] += t.numel()
    return n, by_dtype


def inspect_checkpoint(path: str | Path, *, allow_pickle: bool = False) -> CheckpointDir:
    """Validate a checkpoint directory and read its metadata, without loading any weights.

    Metadata: architecture, model_type, hidden_size, num_layers, vocab_size (from the config),
    num_parameters and dtype (the dtype holding most parameters; from the safetensors
    headers), format, size_bytes and tokenizer (whether tokenizer files are present).
    """
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise CkptselError(f"{path}: no such directory")
    config = load_config(path)
    fmt, files = weight_files(path, allow_pickle=allow_pickle)
    if fmt == "safetensors":
        n_params, by_dtype = 0, Counter()
        for f in files:
            for name, t in read_safetensors_header(f).items():
                if name != "__metadata__":
                    numel = math.prod(t["shape"])
                    n_params += numel
                    by_dtype[_DTYPE_NAMES.get(t["dtype"], t["dtype"].lower())] += numel
    else:
        n_params, by_dtype = _pickle_tensor_stats(files)
    meta = {
        **_architecture(config),
        "num_parameters": n_params,
        "dtype": by_dtype.most_common(1)[0][0] if by_dtype else None,
        "format": fmt,
        "size_bytes": sum(f.stat().st_size for f in files),
        "tokenizer": has_tokenizer(path),
    }
    return CheckpointDir(path=path, step=step_of(path), weight_files=files, format=fmt, metadata=meta)


# -- fingerprints -----------------------------------------------------------------------------
def weights_fingerprint(files: Iterable[Path]) -> str:
    """``"sha256:" + sha256(F_1 || F_2 || ...)[:32 hex]`` with files sorted by name and
    ``F = name.encode() + b"\\0" + size.to_bytes(8, "little") + file bytes`` (the whole file).
    """
    h = hashlib.sha256()
    buf = bytearray(_HASH_BLOCK)
    view = memoryview(buf)
    for file in sorted(files, key=lambda p: p.name):
        size = file.stat().st_size
        h.update(file.name.encode() + b"\0" + size.to_bytes(8, "little"))
        with open(file, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(view[:n])
    return "sha256:" + h.hexdigest()[:32]


# -- registration -----------------------------------------------------------------------------
def _checkpoint_id(run: str | None, step: int | None, path: Path) -> str:
    return f"{run}@{step}" if run is not None and step is not None else path.name


def add_checkpoints(store: Store, paths: Iterable[str | Path], *, run: str | None = None,
                    allow_pickle: bool = False, errors: list | None = None) -> list[Checkpoint]:
    """Validate, fingerprint and register checkpoints (or run directories) in one transaction.

    The id is ``<run>@<step>`` when both are known (``run`` overrides the run taken from the
    directory layout), else the directory name. The path is stored absolute. Re-adding a
    checkpoint from the same path updates it (a new fingerprint if its weights changed).
    Checkpoints of one run must share model_type, hidden size, layers and vocabulary, with
    each other and with the run's checkpoints already in the store.

    With ``errors`` (a list), each bad checkpoint appends ``(path, message)`` and the good
    ones are still added; without it, the first problem raises ``CkptselError`` and nothing
    is written.
    """
    def fail(where, err: CkptselError):
        if errors is None:
            raise err
        errors.append((str(where), str(err)))

    found: list[tuple[str | None, CheckpointDir]] = []
    for p in paths:
        try:
            run_name, dirs = discover(p)
        except CkptselError as e:
            fail(p, e)
            continue
        for d in dirs:
            try:
                found.append((run if run is not None else run_name, inspect_checkpoint(d, allow_pickle=allow_pickle)))
            except CkptselError as e:
                fail(d, e)

    known = store.checkpoints()
    by_id = {c.id: c for c in known}
    reference: dict[str, tuple[str, dict]] = {}  # run -> (checkpoint id, shape metadata)
    for c in known:
        if c.run is not None and all(k in c.metadata for k in _SHAPE_KEYS):
            reference.setdefault(c.run, (c.id, c.metadata))

    added: list[Checkpoint] = []
    new_ids: set[str] = set()
    for run_name, d in found:
        cid = _checkpoint_id(run_name, d.step, d.path)
        old = by_id.get(cid)
        if cid in new_ids or (old is not None and old.path not in (None, str(d.path))):
            other = d.path if cid in new_ids else old.path
            fail(d.path, CkptselError(f"checkpoint id {cid!r} already names {other}; "
                                      "pass --run NAME to add this one under another run"))
            continue
        if run_name is not None:
            ref_id, ref_meta = reference.setdefault(run_name, (cid, d.metadata))
            if any(ref_meta.get(k) != d.metadata.get(k) for k in _SHAPE_KEYS):
                fail(d.path, CkptselError(
                    f"run {run_name!r} mixes architectures: {cid} is {_shape(d.metadata)} but {ref_id} is "
                    f"{_shape(ref_meta)}; add them under different --run names"))
                continue
        try:
            mtime_ns = _weights_mtime_ns(d.weight_files)
            fingerprint = weights_fingerprint(d.weight_files)
        except OSError as e:
            fail(d.path, CkptselError(f"checkpoint {d.path}: cannot read its weights ({e})"))
            continue
        new_ids.add(cid)
        added.append(Checkpoint(id=cid, path=str(d.path), run=run_name, step=d.step,
                                fingerprint=fingerprint, metadata={**(old.metadata if old else {}), **d.metadata,
                                                                   "weights_mtime_ns": mtime_ns}))
    with store.transaction():
        for c in added:
            store.upsert_checkpoint(c)
    return added


def _weights_mtime_ns(files: Iterable[Path]) -> int:
    return max(f.stat().st_mtime_ns for f in files)


def check_on_disk(ckpt: Checkpoint, *, allow_pickle: bool = False) -> None:
    """Raise a one-line ``CkptselError`` naming ``ckpt`` when its directory is no longer usable:
    gone, a config or weights file missing or truncated (the safetensors headers are checked
    against the file sizes), no tokenizer, or weights other than those fingerprinted by
    ``add``. Cheap in the usual case: like make and rsync, weights whose total size and newest
    modification time are those recorded by ``add`` count as unchanged; only when the time
    differs are they hashed again and compared with the fingerprint."""
    if not ckpt.path or not Path(ckpt.path).is_dir():
        raise CkptselError(f"checkpoint {ckpt.id}: its directory {ckpt.path} is gone (deleted or moved since "
                           "`ckptsel add`); restore it there, or add it from its new place with `ckptsel add PATH`")
    try:
        info = inspect_checkpoint(ckpt.path, allow_pickle=allow_pickle)
    except CkptselError as e:
        raise CkptselError(f"checkpoint {ckpt.id}: {e}") from e
    if not info.metadata["tokenizer"]:
        raise CkptselError(f"checkpoint {ckpt.id} has no tokenizer in {ckpt.path}; save one there with "
                           "tokenizer.save_pretrained(DIR)")
    old_size, old_mtime = ckpt.metadata.get("size_bytes"), ckpt.metadata.get("weights_mtime_ns")
    changed = None
    if old_size is not None and old_size != info.metadata["size_bytes"]:
        changed = f"{old_size} bytes, now {info.metadata['size_bytes']}"
    elif old_mtime is not None and old_mtime != _weights_mtime_ns(info.weight_files) \
            and weights_fingerprint(info.weight_files) != ckpt.fingerprint:
        changed = "same size, another fingerprint"
    if changed:
        raise CkptselError(f"checkpoint {ckpt.id}: its weights in {ckpt.path} changed since it was added "
                           f"({changed}); add it again with `ckptsel add {ckpt.path}` so its numbers are "
                           "keyed by the new weights")


def usable_checkpoints(ckpts: Sequence[Checkpoint], *, allow_pickle: bool = False
                       ) -> tuple[list[Checkpoint], list[tuple[str, str]]]:
    """``(usable, [(id, error)])``: ``ckpts`` split by :func:`check_on_disk`, so one bad
    checkpoint costs its own work only."""
    good, bad = [], []
    for c in ckpts:
        try:
            check_on_disk(c, allow_pickle=allow_pickle)
            good.append(c)
        except CkptselError as e:
            bad.append((c.id, str(e)))
    return good, bad


# -- loading ----------------------------------------------------------------------------------
_DTYPE_ALIASES = {"fp32": "float32", "float32": "float32", "float": "float32", "bf16": "bfloat16",
                  "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16", "half": "float16"}


def resolve_device_dtype(dtype=None, device=None):
    """``(torch.device, dtype)``: CUDA when available else CPU; bf16 on CUDA, fp32 on CPU.

    ``dtype`` may be a ``torch.dtype``, a name (``bf16``, ``float32``, ...) or ``"auto"`` (the
    dtype the checkpoint was saved in).
    """
    import torch

    device = torch.device(device) if device is not None else \
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif isinstance(dtype, str) and dtype != "auto":
        if dtype.lower() not in _DTYPE_ALIASES:
            raise CkptselError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(sorted(set(_DTYPE_ALIASES)))}")
        dtype = getattr(torch, _DTYPE_ALIASES[dtype.lower()])
    return device, dtype


def load_model(path: str | Path, *, allow_pickle: bool = False, dtype=None, device=None):
    """``(model, tokenizer)`` of a checkpoint directory, safely: safetensors only unless
    ``allow_pickle``, ``trust_remote_code=False``, local files only; model in eval mode on
    ``device`` (default CUDA if available) in ``dtype`` (default bf16 on CUDA, fp32 on CPU).
    """
    path = Path(path).expanduser().resolve()
    info = inspect_checkpoint(path, allow_pickle=allow_pickle)
    if not info.metadata["tokenizer"]:
        raise CkptselError(f"checkpoint {path} has no tokenizer ({', '.join(TOKENIZER_FILES)}); "
                           f"save one into it with tokenizer.save_pretrained('{path}')")
    device, dtype = resolve_device_dtype(dtype, device)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per checkpoint; ckptsel shows its own progress

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
    except (ValueError, OSError, KeyError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CkptselError(f"checkpoint {path}: cannot load its tokenizer ({first}); "
                           "save a tokenizer transformers knows with tokenizer.save_pretrained") from e
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype, trust_remote_code=False, local_files_only=True,
            use_safetensors=info.format == "safetensors", device_map=str(device),
        )
    except ValueError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CkptselError(f"checkpoint {path} ({info.metadata['model_type']}) cannot be loaded as a causal "
                           f"language model ({first}); ckptsel scores decoder-only models") from e
    return model.eval(), tokenizer
