"""Pretraining the micro zoo: tiny Llama models trained here on CPU, several checkpoints each.

Mirrors the design of Zeng et al., "Can Pre-training Indicators Reliably Predict Fine-tuning
Outcomes of LLMs?" (arXiv 2504.12491) at micro scale: a :class:`Variant` fixes the objective
mix, learning rate, domain mix, seed and the steps to save; presets (``presets.py``) are grids
of variants. :func:`pretrain_variant` trains one variant (a pure function: files only, no
store), :func:`build_zoo` trains what is missing and registers every checkpoint in the store.

Objectives (one is drawn per batch with the variant's weights; every row starts with BOS, the
prefix token the indicators condition on; the loss is token cross-entropy averaged over the
labelled tokens of the batch, ``labels = -100`` elsewhere):

- ``clm``: a window ``[BOS] + x_1..x_{L-1}`` of the domain's token stream (documents joined by
  EOS); every token after BOS is a target.
- ``prefix_lm``: the same window split at ``p ~ U{1, .., L-1}``: positions ``< p`` (BOS
  included) are the prefix, no loss, and attend to each other **bidirectionally**; positions
  ``>= p`` are targets under causal attention. The mask is a 4-D additive float mask
  (``0`` allowed, ``finfo.min`` blocked), which transformers 5 passes to attention as is.
  Position ``p-1`` predicts ``x_p`` while seeing only the prefix, so no target leaks.
- ``span``: T5 span corruption (Raffel et al., arXiv 1910.10683; density 0.15, mean span 3)
  in exactly the decoder-only format of the PPL-SC indicator
  (:mod:`ckptsel.indicators.span_corruption`): ``[BOS] + enc(C + "\\n") + enc(T)`` with loss
  on ``enc(T)`` only. A chunk of ``W`` words of one document is corrupted with
  ``corrupt(chunk, doc_index=k, seed=variant.seed)`` (``k`` counts span examples; chunks are
  cut from the domain's documents joined by blank lines, like the clm stream), ``W`` chosen
  per domain so the example about fills ``L`` tokens; longer ones lose context from the
  left (the indicator's rule), shorter ones are right-padded (no loss, and causal attention
  never looks right, so no mask is needed).

Data order: ``numpy.random.default_rng(seed)`` draws, per batch, the objective, then per row
the domain (weights = the variant's mix) and the window start or chunk. Weights come from
``torch.manual_seed(seed)``. Optimiser: AdamW (betas 0.9/0.95, weight decay 0.01), gradient
norm clipped at 1, learning rate warmed up linearly over ``warmup_steps`` then cosine-decayed
to 10% at the last step. Same seed, same machine, same thread count: identical checkpoint bytes
(at hidden 64, 1 and 2 threads also gave identical bytes).

The tokenizer is shared by the whole zoo (so perplexities compare): byte-level BPE trained on
the pretrain documents of every domain (``ckptsel.tiny.train_tokenizer``) plus
:data:`NUM_SENTINELS` sentinels ``<extra_id_k>`` as special tokens, so a span-corruption
sentinel is one token in training and in the PPL-SC indicator alike. Models have
``max_position_embeddings = seq_len``: the indicators then score windows no longer than the
models were trained on.

Layout::

    <workspace>/zoo/<preset>/tokenizer/                  tokenizer + corpus.json (what it was trained on)
    <workspace>/zoo/<preset>/<variant>/variant.json      the variant's config (written first)
    <workspace>/zoo/<preset>/<variant>/checkpoint-<N>/   save_pretrained (safetensors) + tokenizer
                                                         + trainer_state.json (global_step, tokens_seen, train_loss)
    <workspace>/zoo/<preset>/<variant>/complete.json     written last: variant + tokenizer hash, checkpoints

A variant directory without ``complete.json`` (an interrupted run), or whose
``complete.json`` names another config or tokenizer, is deleted and trained again.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from ckptsel.errors import CkptselError

OBJECTIVES = ("clm", "prefix_lm", "span")
NUM_SENTINELS = 32
SPAN_NOISE_DENSITY = 0.15
SPAN_MEAN_LENGTH = 3.0
COMPLETE = "complete.json"
IGNORE = -100


@dataclass(frozen=True)
class Variant:
    """One pretraining run of the zoo. ``objectives`` and ``mix`` are weights (normalised here)."""

    name: str
    objectives: dict[str, float]
    lr: float
    mix: dict[str, float]
    seed: int
    save_steps: tuple[int, ...]
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    seq_len: int = 256
    batch_size: int = 4
    warmup_steps: int = 20

    def __post_init__(self):
        where = f"zoo variant {self.name!r}"
        if (not self.name or self.name.startswith(".")
                or any(c in self.name for c in "/@\\") or not self.name.isprintable()):
            raise CkptselError(f"{where}: a name must be non-empty without '/', '\\', '@', control "
                               "characters or a leading '.' "
                               "(it becomes a directory and the run name)")
        object.__setattr__(self, "objectives", _weights(self.objectives, OBJECTIVES, f"{where}: objectives"))
        object.__setattr__(self, "mix", _weights(self.mix, None, f"{where}: mix"))
        steps = tuple(sorted(int(s) for s in self.save_steps))
        if not steps or steps[0] < 1 or len(set(steps)) != len(steps):
            raise CkptselError(f"{where}: save_steps must be distinct positive integers, not {list(self.save_steps)}")
        object.__setattr__(self, "save_steps", steps)
        if not (self.lr > 0):
            raise CkptselError(f"{where}: lr must be > 0, not {self.lr}")
        if self.seq_len < 8 or self.batch_size < 1 or self.hidden_size % self.num_heads:
            raise CkptselError(f"{where}: needs seq_len >= 8, batch_size >= 1 and hidden_size divisible by num_heads "
                               f"(got {self.seq_len}, {self.batch_size}, {self.hidden_size}/{self.num_heads})")

    @property
    def max_steps(self) -> int:
        return self.save_steps[-1]

    @property
    def objective_name(self) -> str:
        """``clm``, or a mixture as ``clm:0.5+span:0.5`` (objectives in :data:`OBJECTIVES` order)."""
        if len(self.objectives) == 1:
            return next(iter(self.objectives))
        return "+".join(f"{k}:{v:g}" for k, v in self.objectives.items())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["save_steps"] = list(self.save_steps)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Variant":
        return cls(**{**d, "save_steps": tuple(d["save_steps"])})

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _weights(weights: dict, allowed: Sequence[str] | None, where: str) -> dict[str, float]:
    if not isinstance(weights, dict) or not weights:
        raise CkptselError(f"{where} must be a non-empty mapping of name to weight")
    out = {}
    for k, v in weights.items():
        if allowed is not None and k not in allowed:
            raise CkptselError(f"{where}: unknown {k!r}; choose from {', '.join(allowed)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or v != v:
            raise CkptselError(f"{where}: weight of {k!r} must be a number >= 0, not {v!r}")
    total = float(sum(weights.values()))
    if total <= 0:
        raise CkptselError(f"{where}: the weights sum to 0; give at least one a positive weight")
    order = list(allowed) if allowed is not None else list(weights)
    for k in order:
        if k in weights and weights[k] > 0:
            out[k] = float(weights[k]) / total
    return out


# -- the training examples (see the module docstring) -------------------------------------------
def clm_example(window: Sequence[int]) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of a causal-LM row: every token but the first is a target."""
    ids = list(window)
    return ids, [IGNORE] + ids[1:]


def prefix_lm_example(window: Sequence[int], prefix_len: int) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of a prefix-LM row: no loss on the first ``prefix_len`` tokens."""
    ids = list(window)
    if not 1 <= prefix_len < len(ids):
        raise ValueError(f"prefix_len {prefix_len} must be in [1, {len(ids) - 1}]")
    return ids, [IGNORE] * prefix_len + ids[prefix_len:]


def prefix_attention_mask(prefix_lens: Sequence[int], seq_len: int, dtype=None):
    """The 4-D additive mask ``(batch, 1, L, L)``: query ``i`` may see key ``j`` when ``j <= i``
    or both are in the row's prefix (``i, j < p``); 0 where allowed, ``finfo(dtype).min`` else."""
    import torch

    dtype = dtype or torch.float32
    pos = torch.arange(seq_len)
    causal = pos[None, :] <= pos[:, None]                            # (L, L): key j <= query i
    p = torch.as_tensor(list(prefix_lens))[:, None, None]
    in_prefix = (pos[None, :, None] < p) & (pos[None, None, :] < p)  # (B, L, L)
    allowed = causal[None] | in_prefix
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def span_example(tokenizer, context: str, target: str, seq_len: int) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of ``[BOS] + enc(context + "\\n") + enc(target)``, loss on the target,
    cut from the left to ``seq_len`` tokens and right-padded with the pad token."""
    ctx = [tokenizer.bos_token_id] + tokenizer.encode(context + "\n", add_special_tokens=False)
    tgt = tokenizer.encode(target, add_special_tokens=False)[: seq_len - 1]
    ids = (ctx + tgt)[-seq_len:]
    labels = ([IGNORE] * len(ctx) + tgt)[-seq_len:]
    pad = seq_len - len(ids)
    return ids + [tokenizer.pad_token_id] * pad, labels + [IGNORE] * pad


def sentinels() -> list[str]:
    from ckptsel.indicators.span_corruption import SENTINEL

    return [SENTINEL.format(k) for k in range(NUM_SENTINELS)]


# -- the shared tokenizer -----------------------------------------------------------------------
def pretrain_documents(domains: Sequence[str], data_root=None) -> dict[str, list[str]]:
    from ckptsel.zoo.corpus import load_domain

    return {d: load_domain(d, "pretrain", root=data_root) for d in domains}


def train_zoo_tokenizer(out_dir: Path, domains: Sequence[str], vocab_size: int, data_root=None) -> Path:
    """Train the zoo's tokenizer into ``out_dir`` (reused when ``corpus.json`` matches)."""
    from ckptsel.tiny import train_tokenizer

    docs = pretrain_documents(domains, data_root)
    text = "\n\n".join(doc for d in domains for doc in docs[d])
    recipe = {"domains": list(domains), "vocab_size": vocab_size, "num_sentinels": NUM_SENTINELS,
              "text_sha256": hashlib.sha256(text.encode()).hexdigest()}
    marker = out_dir / "corpus.json"
    if marker.is_file() and json.loads(marker.read_text()) == recipe:
        return out_dir
    if vocab_size <= NUM_SENTINELS + 300:
        raise CkptselError(f"zoo vocab_size {vocab_size} is too small; use at least {NUM_SENTINELS + 300}")
    tok = train_tokenizer(text, vocab_size=vocab_size - NUM_SENTINELS)
    tok.add_tokens(sentinels(), special_tokens=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tok.save_pretrained(out_dir)
    marker.write_text(json.dumps(recipe, indent=2))
    return out_dir


def tokenizer_hash(tokenizer_dir: Path) -> str:
    return hashlib.sha256((Path(tokenizer_dir) / "tokenizer.json").read_bytes()).hexdigest()[:16]


# -- one variant --------------------------------------------------------------------------------
class _Data:
    """Per-domain token streams and span-corruption word chunks, and the batch sampler."""

    def __init__(self, variant: Variant, tokenizer, docs: dict[str, list[str]]):
        import numpy as np

        from ckptsel.indicators.span_corruption import split_words

        self.v, self.tok = variant, tokenizer
        self.domains = list(variant.mix)
        self.domain_p = np.array([variant.mix[d] for d in self.domains])
        self.objectives = list(variant.objectives)
        self.objective_p = np.array([variant.objectives[o] for o in self.objectives])
        self.rng = np.random.default_rng(variant.seed)
        self.streams, self.chunks = {}, {}
        L = variant.seq_len
        for d in self.domains:
            encoded = tokenizer(docs[d], add_special_tokens=False)["input_ids"]
            stream = [t for ids in encoded for t in ids + [tokenizer.eos_token_id]]
            if len(stream) < L:
                raise CkptselError(f"zoo domain {d!r} has {len(stream)} tokens, fewer than seq_len {L}")
            self.streams[d] = np.asarray(stream, dtype=np.int64)
            # Span chunks are consecutive words of the domain's documents joined by blank lines
            # (packed across documents, like the clm windows, so that chunks are full).
            words = split_words("\n\n".join(docs[d]))
            per_word = len(stream) / max(1, len(words))
            # tokens of an example ~ W * (tokens per word + 3 sentinel tokens per span * 0.05 spans per word) + 2
            n_words = max(4, int(0.95 * (L - 2) / (per_word + 3 * SPAN_NOISE_DENSITY / SPAN_MEAN_LENGTH)))
            self.chunks[d] = ["".join(words[i:i + n_words]).strip() for i in range(0, len(words) - n_words + 1, n_words)]
        self.span_count = 0

    def batch(self):
        """``(objective, input_ids, labels, attention_mask or None, n_tokens)`` of the next batch."""
        import torch

        from ckptsel.indicators.span_corruption import corrupt

        v, L, rng = self.v, self.v.seq_len, self.rng
        objective = self.objectives[rng.choice(len(self.objectives), p=self.objective_p)]
        rows, prefix_lens = [], []
        for di in rng.choice(len(self.domains), size=v.batch_size, p=self.domain_p):
            d = self.domains[di]
            if objective == "span":
                chunk = self.chunks[d][rng.integers(len(self.chunks[d]))]
                c = corrupt(chunk, doc_index=self.span_count, seed=v.seed, noise_density=SPAN_NOISE_DENSITY,
                            mean_span_length=SPAN_MEAN_LENGTH)
                self.span_count += 1
                rows.append(span_example(self.tok, c.context, c.target, L))
                continue
            stream = self.streams[d]
            start = int(rng.integers(len(stream) - (L - 1) + 1))
            window = [self.tok.bos_token_id] + stream[start:start + L - 1].tolist()
            if objective == "clm":
                rows.append(clm_example(window))
            else:
                p = int(rng.integers(1, L))
                prefix_lens.append(p)
                rows.append(prefix_lm_example(window, p))
        ids = torch.tensor([r[0] for r in rows])
        labels = torch.tensor([r[1] for r in rows])
        mask = prefix_attention_mask(prefix_lens, L) if objective == "prefix_lm" else None
        n_tokens = int((ids != self.tok.pad_token_id).sum())
        return objective, ids, labels, mask, n_tokens


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine decay to 0.1 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def pretrain_variant(variant: Variant, out_dir, tokenizer_dir, *, data_root=None, threads: int | None = 1,
                     progress: bool = False) -> list[Path]:
    """Train ``variant`` from scratch into ``out_dir`` and return its checkpoint directories.

    Writes only under ``out_dir`` (replaced if it exists): ``variant.json`` first, then
    ``checkpoint-<N>`` at each of ``variant.save_steps``, then ``complete.json``. ``threads``
    sets torch's CPU threads for the call (None: leave torch's); the default 1 is the fastest
    for models this small on a busy machine (2 threads were 15x slower at load 15 on 2
    cores), and the bytes of the result can depend on it.
    """
    import torch
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from ckptsel.tiny import _load_tokenizer, _save, tiny_config

    out_dir, tokenizer_dir = Path(out_dir), Path(tokenizer_dir)
    tokenizer = _load_tokenizer(tokenizer_dir)
    data = _Data(variant, tokenizer, pretrain_documents(list(variant.mix), data_root))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    (out_dir / "variant.json").write_text(json.dumps(variant.to_dict(), indent=2))

    threads_before, bars_before = torch.get_num_threads(), hf_logging.is_progress_bar_enabled()
    if threads:
        torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()  # save_pretrained's "Writing model shards" bar, once per checkpoint
    try:
        torch.manual_seed(variant.seed)
        config = tiny_config(tokenizer, hidden_size=variant.hidden_size, num_layers=variant.num_layers,
                             num_heads=variant.num_heads, max_position_embeddings=variant.seq_len)
        model = LlamaForCausalLM(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=variant.lr, betas=(0.9, 0.95), weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: _lr_factor(s, variant.warmup_steps, variant.max_steps))
        bar = _bar(variant, progress)
        saved, tokens, losses = [], 0, {}
        started = time.perf_counter()
        model.train()
        for step in range(1, variant.max_steps + 1):
            objective, ids, labels, mask, n_tokens = data.batch()
            loss = model(input_ids=ids, labels=labels, attention_mask=mask, use_cache=False).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            tokens += n_tokens
            losses.setdefault(objective, []).append(loss.item())
            bar.update(1)
            if step in variant.save_steps:
                bar.set_postfix_str(f"loss {loss.item():.3f}")
                model.eval()
                path = _save(model, tokenizer, out_dir / f"checkpoint-{step}", None, None)
                model.train()
                state = {"global_step": step, "tokens_seen": tokens,
                         "train_loss": {o: sum(v) / len(v) for o, v in losses.items()}}
                (path / "trainer_state.json").write_text(json.dumps(state, indent=2))
                saved.append(path)
                losses = {}
        bar.close()
    finally:
        torch.set_num_threads(threads_before)
        if bars_before:
            hf_logging.enable_progress_bar()
    (out_dir / COMPLETE).write_text(json.dumps({
        "variant_hash": variant.config_hash(), "tokenizer_hash": tokenizer_hash(tokenizer_dir),
        "checkpoints": [p.name for p in saved], "seconds": round(time.perf_counter() - started, 2)}, indent=2))
    return saved


def _bar(variant: Variant, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=variant.max_steps, desc=f"pretrain {variant.name}", unit="step", file=sys.stderr,
                leave=False, disable=not progress)


def is_complete(variant: Variant, out_dir: Path, tokenizer_dir: Path) -> bool:
    """Whether ``out_dir`` holds a finished training of exactly this variant and tokenizer."""
    marker = Path(out_dir) / COMPLETE
    if not marker.is_file():
        return False
    try:
        done = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return False
    return (done.get("variant_hash") == variant.config_hash()
            and done.get("tokenizer_hash") == tokenizer_hash(tokenizer_dir)
            and all((Path(out_dir) / f"checkpoint-{s}" / "model.safetensors").is_file() for s in variant.save_steps))


# -- the whole zoo ------------------------------------------------------------------------------
@dataclass
class ZooResult:
    preset: str
    root: str
    variants: list[str]
    trained: list[str]
    skipped: list[str]
    checkpoint_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def describe(self) -> str:
        return (f"zoo {self.preset}: {len(self.variants)} variants, {len(self.checkpoint_ids)} checkpoints in "
                f"{self.root} ({len(self.trained)} trained, {len(self.skipped)} already complete) in "
                f"{self.seconds:.1f}s; the checkpoints are in the store as <variant>@<step>, "
                "e.g. `ckptsel list`")


def metadata_features(variant: Variant, tokens_seen: int, domains: Sequence[str]) -> tuple[dict, dict]:
    """``(numeric, categorical)`` zoo features of one checkpoint: ``zoo/lr``, ``zoo/mix/<domain>``,
    ``zoo/tokens`` (tokens read up to its step) and ``zoo/objective``."""
    numeric = {"zoo/lr": variant.lr, "zoo/tokens": float(tokens_seen)}
    numeric.update({f"zoo/mix/{d}": variant.mix.get(d, 0.0) for d in domains})
    return numeric, {"zoo/objective": variant.objective_name}


def build_zoo(preset, workspace, *, progress: bool | None = None, executor=None, data_root=None,
              threads: int | None = 1) -> ZooResult:
    """Train the preset's missing variants, then register every checkpoint in the workspace store.

    ``preset`` is a :class:`~ckptsel.zoo.presets.Preset` or a name/YAML path for
    :func:`~ckptsel.zoo.presets.get_preset`. ``executor`` (``ckptsel.executor``) runs the
    training jobs (default: in this process, one after another); only this process writes
    the store. Checkpoint ids are ``<variant>@<step>`` (run = variant name). Progress bars
    (variants, and steps when training here) go to stderr; ``progress=None``: when it is a tty.
    """
    from ckptsel.checkpoints import add_checkpoints, weight_files, weights_fingerprint
    from ckptsel.executor import Job, LocalExecutor
    from ckptsel.store import Store, spec_hash
    from ckptsel.workspace import Workspace
    from ckptsel.zoo.corpus import DOMAINS
    from ckptsel.zoo.presets import get_preset

    started = time.perf_counter()
    progress = sys.stderr.isatty() if progress is None else progress
    preset = get_preset(preset) if isinstance(preset, (str, Path)) else preset
    ws = Workspace.resolve(workspace).ensure()
    root = ws.root / "zoo" / preset.name
    for v in preset.variants:
        unknown = sorted(set(v.mix) - set(DOMAINS))
        if unknown:
            raise CkptselError(f"zoo variant {v.name!r}: unknown domain {unknown[0]!r}; "
                               f"the corpus has {', '.join(DOMAINS)}")
    tokenizer_dir = train_zoo_tokenizer(root / "tokenizer", DOMAINS, preset.vocab_size, data_root)

    todo = [v for v in preset.variants if not is_complete(v, root / v.name, tokenizer_dir)]
    skipped = [v.name for v in preset.variants if v not in todo]
    executor = executor or LocalExecutor()
    local = getattr(executor, "name", "local") == "local"
    jobs = [Job(key=f"zoo/{preset.name}/{v.name}", fn=pretrain_variant, args=(v, root / v.name, tokenizer_dir),
                kwargs={"data_root": data_root, "threads": threads, "progress": progress and local})
            for v in todo]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(preset.variants), initial=len(skipped), desc=f"zoo {preset.name}", unit="variant",
               file=sys.stderr, disable=not progress)
    with executor:
        for _ in executor.run(jobs):
            bar.update(1)
    bar.close()

    ids = []
    with Store(ws.db_path) as store:
        known = {c.id: c for c in store.checkpoints()}
        for v in preset.variants:
            paths = {f"{v.name}@{s}": root / v.name / f"checkpoint-{s}" for s in v.save_steps}
            # Already registered with these very weights: skip add_checkpoints (it imports transformers).
            same = {cid: known[cid] for cid, p in paths.items() if cid in known and known[cid].path == str(p)
                    and known[cid].fingerprint == weights_fingerprint(weight_files(p)[1])}
            added = add_checkpoints(store, [p for cid, p in paths.items() if cid not in same], run=v.name)
            ckpts = {**same, **{c.id: c for c in added}}
            with store.transaction():
                # One spec_id for the whole zoo, so that a model trained on zoo/* reads every variant.
                variant_hash = spec_hash({"zoo": preset.name, "variant": v.to_dict()})
                store.put_spec(variant_hash, kind="zoo", spec_id=spec_hash({"zoo": preset.name}),
                               name=f"zoo {preset.name}", command=f"ckptsel zoo build --preset {preset.name}")
                for cid, c in ckpts.items():
                    state = json.loads((paths[cid] / "trainer_state.json").read_text())
                    numeric, categorical = metadata_features(v, state["tokens_seen"], DOMAINS)
                    store.put_features(c.fingerprint, numeric, categorical,
                                       spec_hash=variant_hash)
            ids += [cid for cid in paths if cid in ckpts]
    return ZooResult(preset.name, str(root), [v.name for v in preset.variants], [v.name for v in todo],
                     skipped, ids, round(time.perf_counter() - started, 2))
