"""Checkpoint averaging: the weighted parameter mean of several checkpoints, streamed.

Nishida, Isonuma & Oda, *Instability in Downstream Task Performance During LLM Pretraining*
(arXiv 2510.04848), stabilise downstream scores by averaging the parameters of neighbouring
pretraining checkpoints. For checkpoints ``θ_1 … θ_n`` and weights ``w_i >= 0`` with
``Σ w_i > 0`` (uniform ``w_i = 1`` by default), every tensor of the output is

    θ̄ = (Σ_i w_i θ_i) / (Σ_i w_i)

which is the mean with weights normalised to sum 1.

**Numerics** mirror mergekit's ``linear`` merge (arcee-ai/mergekit,
``mergekit/merge_methods/linear.py``, ``normalize: true``), so an fp32 result is bit-identical
to mergekit's: the accumulator is float32 (float64 when the inputs are float64), the raw
weights are cast to that dtype, ``acc = 0`` then ``acc += w_i θ_i`` in input order
(``torch.addcmul_``; the inputs upcast exactly), then ``acc /= Σ w_i`` (the sum taken in the
accumulator dtype), and the result is cast back to the inputs' dtype (round to nearest even
for bf16/fp16). Each step rounds once, so for a few inputs the fp32 result is within a few
ulps of the exact mean; float64 accumulation would be closer to it but would no longer match
mergekit bit for bit. Inputs must be floating point and agree in name, shape and dtype.

**Memory.** safetensors maps files copy-on-write, and mapped pages count in the resident set
for as long as the mapping lives, so a handle kept open while every tensor is read holds all
the models in RSS. Here each block of at most ``_BLOCK_BYTES`` of accumulator (rows of one
tensor) opens each input, reads its rows through ``safetensors.safe_open``, adds them into one
fresh accumulator and closes the file before the next; the output is written by a streaming
safetensors writer (header first, then each block). Peak memory is the accumulator, one
input block and the cast output block, whatever the model size. On three 106M-parameter
fp32 checkpoints (1.3 GB in) ``ckptsel average`` peaked at about 0.35 GB of RSS, 0.22 GB of
it the Python and torch runtime, against 2.0 GB for mergekit (``bench/average.py``).

The output directory is a loadable Hugging Face checkpoint: the averaged weights as
``model.safetensors`` (or shards ``model-0000i-of-0000n.safetensors`` and
``model.safetensors.index.json`` when larger than ``max_shard_size``, as transformers writes
them), the ``config.json``, ``generation_config.json`` and tokenizer files of the LAST input,
and ``ckptsel_average.json`` recording the inputs and normalised weights. It is written to a
temporary directory beside it and renamed at the end, so a failure leaves no partial output.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ckptsel.errors import CkptselError

DEFAULT_MAX_SHARD_SIZE = "5GB"
AVERAGE_RECORD = "ckptsel_average.json"
_BLOCK_BYTES = 32 << 20
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
# config.json fields that fix the architecture and the tensor shapes (Llama/GPT-2/OPT/T5 names).
_ARCH_KEYS = ("model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings",
              "n_embd", "n_layer", "n_head", "n_inner", "d_model", "num_layers", "ffn_dim")
# Files copied from the last input besides the weights: its config, generation config and tokenizer.
_COPIED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "spiece.model",
                 "sentencepiece.bpe.model", "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja",
                 "chat_template.json", "preprocessor_config.json")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class _Tensor:
    dtype: str
    shape: tuple[int, ...]
    file: Path

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _DTYPE_BYTES[self.dtype]


@dataclass
class _Input:
    path: Path
    config: dict
    tensors: dict[str, _Tensor]  # in file order, then data offset


# -- arguments --------------------------------------------------------------------------------
def parse_weights(text: str | Sequence[float] | None, n: int) -> list[float] | None:
    """Weights from ``"w1,w2,..."`` (or a sequence): ``n`` finite numbers >= 0 with a positive sum.

    Returned as given (not normalised); the average divides by their sum.
    """
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        weights = [float(w) for w in items]
    except (TypeError, ValueError):
        raise CkptselError(f"--weights {text!r} is not a comma-separated list of numbers; "
                           f"pass {n} weights such as {','.join(['1'] * n)}") from None
    if len(weights) != n:
        raise CkptselError(f"--weights has {len(weights)} values for {n} checkpoints; pass one weight per checkpoint")
    if not all(math.isfinite(w) for w in weights):
        raise CkptselError(f"--weights {text!r} has a non-finite value; pass finite numbers >= 0")
    if any(w < 0 for w in weights):
        raise CkptselError(f"--weights {text!r} has a negative value; averaging takes weights >= 0")
    if sum(weights) <= 0:
        raise CkptselError(f"--weights {text!r} sum to zero; give at least one checkpoint a positive weight")
    return weights


def parse_size(size: int | str) -> int:
    """Bytes in ``5GB`` (10^9), ``5GiB`` (2^30), ``500MB`` ... or an int, as transformers reads ``max_shard_size``."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        m = _SIZE.match(str(size))
        if not m:
            raise CkptselError(f"max shard size {size!r} is not a size; write e.g. 5GB, 500MB or 2GiB")
        unit = (m[2] or "B").upper()
        scale = 1 if unit == "B" else (1024 if "I" in unit else 1000) ** ("KMGT".index(unit[0]) + 1)
        value = int(float(m[1]) * scale)
    if value <= 0:
        raise CkptselError(f"max shard size {size!r} must be positive")
    return value


# -- reading the inputs -----------------------------------------------------------------------
def _read_input(path: str | os.PathLike) -> _Input:
    from ckptsel.checkpoints import SAFETENSORS_INDEX, read_safetensors_header, weight_files

    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        what = "is a file" if path.exists() else "does not exist"
        raise CkptselError(f"checkpoint {path} {what}; pass Hugging Face checkpoint directories (config.json + safetensors)")
    try:
        config = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise CkptselError(f"{path} is not a checkpoint (no config.json); pass directories saved with "
                           "save_pretrained") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CkptselError(f"{path}/config.json is not valid JSON ({e}); re-save the checkpoint") from None
    if not (path / "model.safetensors").is_file() and not (path / SAFETENSORS_INDEX).is_file() \
            and any(path.glob("pytorch_model*.bin")):
        raise CkptselError(f"checkpoint {path} has only pickled .bin weights; ckptsel average reads safetensors "
                           "only (re-save it with model.save_pretrained(DIR), which writes safetensors)")
    _, files = weight_files(path)
    tensors: dict[str, _Tensor] = {}
    for file in files:
        header = read_safetensors_header(file)
        entries = sorted((t["data_offsets"][0], name, t) for name, t in header.items() if name != "__metadata__")
        for _, name, t in entries:
            if name in tensors:
                raise CkptselError(f"checkpoint {path}: tensor {name} is in both {tensors[name].file.name} and "
                                   f"{file.name}; re-save the checkpoint")
            tensors[name] = _Tensor(t["dtype"], tuple(int(d) for d in t["shape"]), file)
    if (path / SAFETENSORS_INDEX).is_file():
        listed = json.loads((path / SAFETENSORS_INDEX).read_text())["weight_map"]
        for name, shard in listed.items():
            if name not in tensors or tensors[name].file.name != shard:
                raise CkptselError(f"checkpoint {path}: {SAFETENSORS_INDEX} puts tensor {name} in {shard} but it "
                                   "is not there; re-save the checkpoint")
    return _Input(path, config, tensors)


def _check_compatible(inputs: list[_Input]) -> None:
    """Same architecture (config fields in ``_ARCH_KEYS``) and the same tensor names, shapes and dtypes."""
    ref = inputs[0]
    for other in inputs[1:]:
        for key in _ARCH_KEYS:
            a, b = ref.config.get(key), other.config.get(key)
            if a != b:
                raise CkptselError(f"checkpoints {ref.path} and {other.path} have different architectures "
                                   f"({key} {a!r} vs {b!r}); average checkpoints of one model")
        missing = [n for n in ref.tensors if n not in other.tensors]
        extra = [n for n in other.tensors if n not in ref.tensors]
        if missing or extra:
            name, has, lacks = (missing[0], ref, other) if missing else (extra[0], other, ref)
            raise CkptselError(f"tensor {name} is in {has.path} but not in {lacks.path} "
                               f"({len(missing) + len(extra)} tensor names differ); average checkpoints of one model")
        for name, t in ref.tensors.items():
            u = other.tensors[name]
            if t.shape != u.shape:
                raise CkptselError(f"tensor {name} has shape {list(t.shape)} in {ref.path} but {list(u.shape)} in "
                                   f"{other.path}; average checkpoints of one model")
            if t.dtype != u.dtype:
                raise CkptselError(f"tensor {name} is {t.dtype} in {ref.path} but {u.dtype} in {other.path}; "
                                   "average checkpoints saved in one dtype")
    for name, t in ref.tensors.items():
        if t.dtype not in _FLOAT_DTYPES:
            raise CkptselError(f"tensor {name} of {ref.path} is {t.dtype}; only floating-point tensors can be "
                               "averaged")


# -- writing ----------------------------------------------------------------------------------
def _shard_plan(names: list[str], tensors: dict[str, _Tensor], max_bytes: int) -> list[list[str]]:
    """Greedy split in order, a new shard when the next tensor would pass ``max_bytes`` (as transformers)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name in names:
        nbytes = tensors[name].nbytes
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _safetensors_header(names: list[str], tensors: dict[str, _Tensor]) -> bytes:
    """The safetensors prefix: u64 LE header length, then the JSON header padded with spaces to 8 bytes."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        t = tensors[name]
        header[name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _torch_dtype(dtype: str):
    import torch

    return {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
            "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}[dtype]


def _average_tensor(name: str, t: _Tensor, files: list[Path], weights: list[float], out) -> None:
    """Write ``(Σ w_i θ_i[name]) / Σ w_i`` to ``out`` block by block (rows of at most ``_BLOCK_BYTES``)."""
    import torch
    from safetensors import safe_open

    acc_dtype = torch.float64 if t.dtype == "F64" else torch.float32
    coefficients = [torch.tensor(w, dtype=acc_dtype) for w in weights]
    denominator = torch.tensor(weights, dtype=acc_dtype).sum()
    out_dtype = _torch_dtype(t.dtype)
    rows = t.shape[0] if t.shape else 1
    row_numel = math.prod(t.shape[1:]) if t.shape else 1
    step = max(1, _BLOCK_BYTES // (acc_dtype.itemsize * max(row_numel, 1)))
    for start in range(0, rows, step):
        acc = None
        for file, c in zip(files, coefficients):
            # Open per block: the mapping (and the pages read through it) goes away when closed.
            with safe_open(file, framework="pt") as f:
                src = f.get_tensor(name)  # a lazy view of the mapping; only the rows read become resident
                block = src[start:start + step] if t.shape else src
                if acc is None:  # 0 + w·θ_1 rounds once, as mergekit's addcmul_ into zeros
                    acc = torch.mul(block, c) if block.dtype == acc_dtype else block.to(acc_dtype).mul_(c)
                else:
                    acc.addcmul_(block, c)
                del src, block
        acc.div_(denominator)
        result = acc if out_dtype == acc_dtype else acc.to(out_dtype)
        out.write(memoryview(result.reshape(-1).view(torch.uint8).numpy()))
        del acc, result


def _write_weights(tmp: Path, inputs: list[_Input], weights: list[float], max_bytes: int, progress: bool) -> None:
    ref = inputs[0]
    names = list(ref.tensors)
    shards = _shard_plan(names, ref.tensors, max_bytes)
    n = len(shards)
    file_names = ["model.safetensors"] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(t.nbytes for t in ref.tensors.values()), unit="B", unit_scale=True, desc="averaging")
    for shard, file_name in zip(shards, file_names):
        with open(tmp / file_name, "wb") as out:
            out.write(_safetensors_header(shard, ref.tensors))
            for name in shard:
                t = ref.tensors[name]
                _average_tensor(name, t, [inp.tensors[name].file for inp in inputs], weights, out)
                if bar is not None:
                    bar.update(t.nbytes)
    if bar is not None:
        bar.close()
    if n > 1:
        index = {"metadata": {"total_size": sum(t.nbytes for t in ref.tensors.values())},
                 "weight_map": {name: file_name for shard, file_name in zip(shards, file_names) for name in shard}}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def average_checkpoints(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                        weights: Sequence[float] | str | None = None, *,
                        max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, overwrite: bool = False,
                        progress: bool = False) -> Path:
    """Write the weighted parameter mean of ``paths`` to ``out_dir``; return ``out_dir`` (absolute).

    ``θ̄ = Σ w_i θ_i / Σ w_i`` per tensor (checkpoint averaging, Nishida, Isonuma & Oda,
    arXiv 2510.04848), with mergekit ``linear``'s arithmetic (see the module docstring).
    ``weights``: one per checkpoint, >= 0 with a positive sum (default uniform). The output
    has the config and tokenizer of the last input. Raises ``CkptselError`` (and writes
    nothing) for non-checkpoints, pickle-only checkpoints, different architectures, or
    tensors whose names, shapes or dtypes differ.
    """
    if not paths:
        raise CkptselError("name at least one checkpoint to average")
    w = parse_weights(weights, len(paths)) or [1.0] * len(paths)
    max_bytes = parse_size(max_shard_size)
    out = Path(out_dir).expanduser().resolve()
    inputs = [_read_input(p) for p in paths]
    if any(inp.path == out for inp in inputs):
        raise CkptselError(f"output {out} is one of the inputs; choose another -o directory")
    if out.exists() and not overwrite:
        raise CkptselError(f"output {out} already exists; choose another -o directory or pass --overwrite")
    _check_compatible(inputs)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_dir(out, "partial")
    try:
        _write_weights(tmp, inputs, w, max_bytes, progress)
        last = inputs[-1].path
        for name in _COPIED_FILES:
            if (last / name).is_file():
                shutil.copy2(last / name, tmp / name)
        total = sum(w)
        record = {"method": "linear (weighted parameter mean, mergekit linear arithmetic)",
                  "inputs": [str(inp.path) for inp in inputs], "weights": [x / total for x in w],
                  "config_from": str(last)}
        (tmp / AVERAGE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if out.exists():
            old = _fresh_dir(out, "old")
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CkptselError(f"writing {out} failed ({e}); check the free space and permissions there") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _fresh_dir(out: Path, tag: str) -> Path:
    """A new hidden directory beside ``out`` (same file system, so renames are atomic)."""
    while True:
        path = out.parent / f".{out.name}.{tag}-{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
