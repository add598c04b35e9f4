"""The scoring model: one interface over a Hugging Face causal LM or an ensemble of them.

Every indicator talks to a :class:`ScoringLM`: ``forward(input_ids, ...)`` returns logits
(float32) whose ``log_softmax`` is the model's next-token log-probability, and a cache that
``select`` can reorder (for scoring a shared context once). Tokenisation follows
lm-evaluation-harness's ``HFLM`` (lm_eval/models/huggingface.py, v0.4):

- ``tok_encode(s)`` = ``tokenizer.encode(s)`` with the tokenizer's default special tokens,
  except when ``s`` starts with the decoded prefix token;
- the prefix token (conditioning for the first token) is BOS, else EOS (``prefix_token_id``);
- ``max_length`` is the config's ``n_positions``/``max_position_embeddings``/``n_ctx`` (of
  ``text_config`` first), else the tokenizer's ``model_max_length``, else 2048
  (``resolve_max_length``), unless the spec sets one.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Sequence

import torch

DEFAULT_MAX_LENGTH = 2048
_TOKENIZER_INFINITY = 1000000000000000019884624838656


def resolve_max_length(config, tokenizer) -> int:
    """lm-eval's ``resolve_max_length``: the model's context window in tokens."""
    cfg = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value is not None:
            return int(value)
    mml = getattr(tokenizer, "model_max_length", None)
    if mml is not None and mml != _TOKENIZER_INFINITY:
        return int(mml)
    return DEFAULT_MAX_LENGTH


@dataclass
class Forward:
    """``logits``: float32, either ``[B, T, V]`` or, when ``keep`` was given, ``[n_kept, V]``."""

    logits: torch.Tensor
    past: Any = None


# On CPU, models below this many parameters score with one intra-op thread: their matrices
# are so small that thread synchronisation costs more than it saves. Measured on the shared,
# busy 2-core build machine, 1 thread vs 2: the whole default spec on a 0.1M-parameter model
# 3.8 s vs 34 s; its stdlib perplexity alone at 2.9M parameters 12 s vs 19-38 s, at 16M
# parameters 70-77 s vs 84-95 s.
SMALL_MODEL_PARAMS = 20_000_000


class ScoringLM:
    """A tokenizer plus a forward pass. Subclasses: :class:`HFScoringLM`, :class:`EnsembleLM`."""

    tokenizer: Any
    device: torch.device
    max_length: int
    pad_id: int
    n_params: int = 0
    threads: int | None = None  # intra-op CPU threads while scoring; None: automatic, 0: torch's

    @contextmanager
    def scoring_threads(self):
        """Run with this model's CPU thread count (see :data:`SMALL_MODEL_PARAMS`), then restore."""
        n = self.threads
        if n is None:
            n = 1 if self.device.type == "cpu" and self.n_params < SMALL_MODEL_PARAMS else 0
        before = torch.get_num_threads()
        if n and n != before:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)

    # -- tokenisation (lm-eval's HFLM rules) ----------------------------------------------
    @property
    def prefix_token_id(self) -> int:
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    def tok_encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        kwargs = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        if add_special_tokens is None and text.startswith(self.tokenizer.decode(self.prefix_token_id)):
            kwargs["add_special_tokens"] = False
        return list(self.tokenizer.encode(text, **kwargs))

    def tok_encode_many(self, texts: Sequence[str], add_special_tokens: bool | None = None) -> list[list[int]]:
        """:meth:`tok_encode` of many texts, in one batched call of the tokenizer per setting."""
        prefix = self.tokenizer.decode(self.prefix_token_id)
        flags = [add_special_tokens if add_special_tokens is not None else
                 (False if t.startswith(prefix) else None) for t in texts]
        out: list[list[int] | None] = [None] * len(texts)
        for flag in set(flags):
            idx = [i for i, f in enumerate(flags) if f == flag]
            kwargs = {} if flag is None else {"add_special_tokens": flag}
            ids = self.tokenizer([texts[i] for i in idx], **kwargs)["input_ids"]
            for i, x in zip(idx, ids):
                out[i] = list(x)
        return out  # type: ignore[return-value]

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """:meth:`encode_pair` of many requests, each distinct context tokenised once."""
        out: list[tuple[list[int], list[int]] | None] = [None] * len(pairs)
        split = []
        for i, (context, continuation) in enumerate(pairs):
            if context == "":
                out[i] = self.encode_pair(context, continuation)
                continue
            n_spaces = len(context) - len(context.rstrip())
            if n_spaces:
                continuation = context[-n_spaces:] + continuation
                context = context[:-n_spaces]
            split.append((i, context, continuation))
        contexts = sorted({c for _, c, _ in split})
        ctx_ids = dict(zip(contexts, self.tok_encode_many(contexts)))
        wholes = self.tok_encode_many([c + x for _, c, x in split])
        for (i, c, _), whole in zip(split, wholes):
            ctx = ctx_ids[c]
            out[i] = (list(ctx), whole[len(ctx):])
        return out  # type: ignore[return-value]

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's ``loglikelihood`` tokenisation of a (context, continuation) request:
        trailing whitespace of the context moves to the continuation; the continuation's
        tokens are those of ``context + continuation`` after the context's own tokens;
        an empty context becomes the prefix token."""
        if context == "":
            cont = self.tok_encode(continuation, add_special_tokens=False)
            if cont and cont[0] == self.prefix_token_id:
                return cont[:1], cont[1:]
            return [self.prefix_token_id], cont
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        return ctx, whole[len(ctx):]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    # -- the forward pass -----------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past: Any = None, use_cache: bool = False,
                keep: torch.Tensor | None = None) -> Forward:
        raise NotImplementedError

    def select(self, past: Any, index: torch.Tensor) -> Any:
        raise NotImplementedError


def cache_argument(model) -> str:
    """The forward argument (and output field) of a model's key/value cache: ``cache`` where the
    model takes it (recent transformers 5, where ``past_key_values`` still works but warns), else
    ``past_key_values``."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper takes **kwargs
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


class HFScoringLM(ScoringLM):
    """A loaded ``transformers`` causal LM in eval mode."""

    def __init__(self, model, tokenizer, *, max_length: int | None = None, threads: int | None = None):
        self.model = model.eval()
        self.n_params = sum(p.numel() for p in model.parameters())
        self.threads = threads
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.max_length = int(max_length or resolve_max_length(model.config, tokenizer))
        self.vocab_size = int(model.config.vocab_size) if hasattr(model.config, "vocab_size") else None
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (tokenizer.eos_token_id or 0))
        self._keep_mode: str | None = None  # "mask" once the model slices logits itself, else "manual"
        self._cache_arg = cache_argument(model)

    def forward(self, input_ids, *, attention_mask=None, position_ids=None, past=None, use_cache=False,
                keep=None) -> Forward:
        if attention_mask is None:
            # Pads sit right of every real token, so causal attention already hides them from the
            # scored positions; all ones keeps the unmasked fast path and GPT-2's padding warning quiet.
            attention_mask = torch.ones_like(input_ids)
        kwargs: dict = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=use_cache)
        if past is not None:
            kwargs[self._cache_arg] = past
        if keep is not None and self._keep_mode != "manual":
            # Project only the scored positions onto the vocabulary (transformers >= 5: a
            # boolean [B, T] logits_to_keep returns [n_true, V]).
            try:
                out = self.model(**kwargs, logits_to_keep=keep)
                n = int(keep.sum())
                if out.logits.ndim == 2 and out.logits.shape[0] == n:
                    self._keep_mode = "mask"
                    return Forward(out.logits.float(), getattr(out, self._cache_arg) if use_cache else None)
            except (TypeError, IndexError, RuntimeError):
                pass
            self._keep_mode = "manual"
        out = self.model(**kwargs)
        logits = out.logits
        if keep is not None:
            logits = logits[keep]
        return Forward(logits.float(), getattr(out, self._cache_arg) if use_cache else None)

    def select(self, past, index):
        if hasattr(past, "batch_select_indices"):
            past.batch_select_indices(index)
            return past
        if hasattr(past, "reorder_cache"):
            past.reorder_cache(index)
            return past
        return tuple(tuple(t.index_select(0, index) for t in layer) for layer in past)


class EnsembleLM(ScoringLM):
    """The ensemble of K models with one tokenizer: the mean of their output probabilities.

    ``p_ens(x_t | x_<t) = (1/K) Σ_k p_k(x_t | x_<t)``, computed in log space as
    ``logsumexp_k(log p_k) − log K`` (returned as logits; their log_softmax is themselves).
    """

    def __init__(self, members: Sequence[HFScoringLM]):
        if not members:
            raise ValueError("an ensemble needs at least one model")
        self.members = list(members)
        first = self.members[-1]
        self.tokenizer = first.tokenizer
        self.device = first.device
        self.max_length = min(m.max_length for m in self.members)
        self.pad_id = first.pad_id
        self.n_params = sum(m.n_params for m in self.members)
        self.threads = first.threads

    def forward(self, input_ids, *, attention_mask=None, position_ids=None, past=None, use_cache=False,
                keep=None) -> Forward:
        pasts = past if past is not None else [None] * len(self.members)
        total = None
        new_pasts = []
        for m, p in zip(self.members, pasts):
            f = m.forward(input_ids, attention_mask=attention_mask, position_ids=position_ids, past=p,
                          use_cache=use_cache, keep=keep)
            logp = torch.log_softmax(f.logits, dim=-1)
            total = logp if total is None else torch.logaddexp(total, logp)
            new_pasts.append(f.past)
        logits = total - math.log(len(self.members))
        return Forward(logits, new_pasts if use_cache else None)

    def select(self, past, index):
        return [m.select(p, index) for m, p in zip(self.members, past)]
