"""Tiny Hugging Face checkpoints built locally, for tests, benchmarks and the demo.

No weights can be downloaded where ckptsel is built, so tests use checkpoints made here:
a byte-level BPE tokenizer trained with ``tokenizers`` on a deterministic English text
(Python standard-library docstrings), and a random-init ``LlamaForCausalLM`` saved with
``save_pretrained`` (safetensors). A checkpoint of the default size (hidden 32, 2 layers,
vocab 512) is about 0.2 MB and builds in well under a second.

The tokenizer adds no special tokens on its own (like GPT-2/Pythia); ``<s>``, ``</s>`` and
``<pad>`` are registered as bos, eos and pad tokens with ids 1, 2 and 0.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Iterable

# Pure-Python standard-library modules whose docstrings make the default text. Docstrings are
# read from the source files with ``ast`` (nothing is imported), so neither the process state
# nor libraries that patch the standard library can change the text.
_TEXT_MODULES = (
    "argparse", "base64", "bisect", "calendar", "collections", "configparser", "contextlib", "csv",
    "dataclasses", "datetime", "difflib", "doctest", "email.message", "enum", "fnmatch", "fractions",
    "functools", "glob", "gzip", "heapq", "html", "http.client", "inspect", "ipaddress", "json",
    "logging", "operator", "optparse", "pathlib", "pickle", "pprint", "queue", "random", "shlex",
    "shutil", "smtplib", "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap",
    "threading", "typing", "unittest.case", "urllib.parse", "uuid", "warnings", "zipfile",
)
_TEXT_CHARS = 200_000
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")


def _docstrings(module_name: str) -> Iterable[str]:
    """The module's docstring, then those of its public classes, functions and methods in
    source order (names starting with ``_`` skipped)."""
    import ast
    import importlib.util

    source = Path(importlib.util.find_spec(module_name).origin).read_text(encoding="utf-8")
    tree = ast.parse(source)
    doc = ast.get_docstring(tree)
    if doc:
        yield doc

    def walk(body):
        for node in body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) \
                    and not node.name.startswith("_"):
                doc = ast.get_docstring(node)
                if doc:
                    yield doc
                if isinstance(node, ast.ClassDef):
                    yield from walk(node.body)

    yield from walk(tree.body)


@functools.lru_cache(maxsize=1)
def default_text() -> str:
    """About 200 KB of English: docstrings of a fixed list of standard-library modules.

    Paragraphs are separated by blank lines; the text is cut at a paragraph boundary after
    ``_TEXT_CHARS`` characters. Deterministic for a given Python minor version (3.11).
    """
    parts: list[str] = []
    total = 0
    seen: set[str] = set()
    for module_name in _TEXT_MODULES:
        for doc in _docstrings(module_name):
            if doc in seen:
                continue
            seen.add(doc)
            parts.append(doc)
            total += len(doc) + 2
            if total >= _TEXT_CHARS:
                return "\n\n".join(parts) + "\n"
    return "\n\n".join(parts) + "\n"


def train_tokenizer(text: str | None = None, *, vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on ``text`` (default: :func:`default_text`).

    Returns a ``transformers.PreTrainedTokenizerFast`` with pad/bos/eos = ``<pad>``/``<s>``/``</s>``.
    Training is single-pass and deterministic for the same text and vocab size.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = default_text() if text is None else text
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Paragraphs as the training iterator: deterministic order, and words never span them.
    tok.train_from_iterator(text.split("\n\n"), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
    )


def tiny_config(tokenizer, *, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 4,
                vocab_size: int | None = None, max_position_embeddings: int = 512):
    """The ``LlamaConfig`` of a tiny model for ``tokenizer`` (vocab = len(tokenizer) unless larger)."""
    from transformers import LlamaConfig

    n_tok = len(tokenizer)
    if vocab_size is not None and vocab_size < n_tok:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's {n_tok} tokens")
    return LlamaConfig(
        vocab_size=vocab_size or n_tok,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )


def _load_tokenizer(tokenizer_dir):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(tokenizer_dir), local_files_only=True)


def _save(model, tokenizer, out_dir: Path, step: int | None, max_shard_size) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(out_dir, **kwargs)
    tokenizer.save_pretrained(out_dir)
    if step is not None:
        (out_dir / "trainer_state.json").write_text(json.dumps({"global_step": int(step)}, indent=2))
    return out_dir


def build_tiny_checkpoint(out_dir, *, seed: int = 0, hidden_size: int = 32, num_layers: int = 2,
                          num_heads: int = 4, vocab_size: int | None = None, text: str | None = None,
                          tokenizer_dir=None, step: int | None = None,
                          max_shard_size: int | str | None = None, max_position_embeddings: int = 512) -> Path:
    """Build a random-init tiny ``LlamaForCausalLM`` and its tokenizer into ``out_dir``.

    The tokenizer is loaded from ``tokenizer_dir`` when given, else trained on ``text``
    (default :func:`default_text`) with a vocabulary of ``vocab_size`` (default 512).
    Weights come from ``torch.manual_seed(seed)``; the model is saved in fp32 safetensors
    (sharded when ``max_shard_size`` is given). With ``step``, a ``trainer_state.json``
    holding ``global_step`` is written too. ``max_position_embeddings`` is the context window
    (the indicators' ``max_length`` unless a spec sets one). Returns ``out_dir`` as a ``Path``.
    """
    model, tokenizer = _init_model(text, tokenizer_dir, vocab_size, hidden_size, num_layers, num_heads, seed,
                                   max_position_embeddings)
    return _save(model.eval(), tokenizer, Path(out_dir), step, max_shard_size)


def _init_model(text, tokenizer_dir, vocab_size, hidden_size, num_layers, num_heads, seed,
                max_position_embeddings: int = 512):
    """A tokenizer (loaded, or trained on ``text``) and a random-init model seeded by ``seed``."""
    import torch
    from transformers import LlamaForCausalLM

    if tokenizer_dir is not None:
        tokenizer = _load_tokenizer(tokenizer_dir)
    else:
        tokenizer = train_tokenizer(text, vocab_size=vocab_size or 512)
    config = tiny_config(tokenizer, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                         vocab_size=vocab_size, max_position_embeddings=max_position_embeddings)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config), tokenizer


def build_tiny_run(run_dir, steps: Iterable[int] = (100, 200, 300), *, seed: int = 0,
                   updates_per_checkpoint: int = 3, lr: float = 1e-2, text: str | None = None,
                   tokenizer_dir=None, vocab_size: int | None = None, hidden_size: int = 32,
                   num_layers: int = 2, num_heads: int = 4, batch_size: int = 4,
                   seq_len: int = 64) -> list[Path]:
    """A run directory of checkpoints ``checkpoint-<N>`` sharing one tokenizer.

    One model (``torch.manual_seed(seed)``) is trained with AdamW on ``text``; between two
    saved checkpoints it takes ``updates_per_checkpoint`` optimizer steps on deterministic
    batches (consecutive ``seq_len``-token windows of the text's first 65,536 characters), so
    later checkpoints have lower loss and every checkpoint's weights differ. Each directory
    also has a ``trainer_state.json``. Returns the checkpoint directories in step order.
    """
    import torch

    run_dir = Path(run_dir)
    text = default_text() if text is None else text
    model, tokenizer = _init_model(text, tokenizer_dir, vocab_size, hidden_size, num_layers, num_heads, seed)
    ids = torch.tensor(tokenizer(text[:65536])["input_ids"], dtype=torch.long)
    n_windows = len(ids) // seq_len
    if n_windows == 0:
        raise ValueError(f"text of {len(ids)} tokens is shorter than one window of {seq_len}")
    windows = ids[: n_windows * seq_len].view(n_windows, seq_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    out, cursor = [], 0
    for step in sorted(steps):
        model.train()
        for _ in range(updates_per_checkpoint):
            rows = torch.arange(cursor, cursor + batch_size) % n_windows
            cursor += batch_size
            batch = windows[rows]
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        out.append(_save(model, tokenizer, run_dir / f"checkpoint-{step}", step, None))
    return out
