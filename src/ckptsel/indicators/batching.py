"""Batched inference with length bucketing: log-likelihood requests and greedy generation.

All three entry points sort their work by length (longest first, so a memory error shows at
once), cut it into batches of at most ``batch_size`` sequences of similar length, right-pad
only within a batch, and run under ``torch.inference_mode`` (with one CPU thread for small
models, see ``lm.SMALL_MODEL_PARAMS``). With right padding a causal model's real positions
never see the pads, so full-sequence passes need no padding mask (``HFScoringLM`` passes all
ones); only the scored positions are projected onto the vocabulary.

- :func:`loglikelihood` scores ``(context, continuation)`` token requests exactly as
  lm-evaluation-harness's ``HFLM._loglikelihood_tokens``: the model reads
  ``(context + continuation)[-(max_length + 1):][:-1]`` and the continuation is scored on the
  last ``len(continuation)`` positions (left truncation when too long). A continuation longer
  than ``max_length`` tokens is scored in consecutive pieces of ``max_length`` tokens, each the
  continuation of the context and the pieces before it (the same rule), and the pieces summed.
- :func:`loglikelihood_groups` scores several continuations of one shared context (multiple
  choice) with the context computed once: a pass over the contexts keeps the key/value cache,
  which is copied to each choice's row, and a second pass reads only the choices' tokens (rows
  sorted by length, in chunks of at most 16, so padding stays small). It
  gives the same numbers as :func:`loglikelihood` (up to float rounding). A group goes through
  :func:`loglikelihood` instead when it needs truncation, or when sharing would save fewer
  tokens than the choices hold (``Σ len(choice) ≥ (n_choices − 1)·len(context)``; the cached
  pass costs about twice the plain one per token).
- :func:`greedy_generate` decodes greedily until a stop string, EOS or ``max_new_tokens``.
"""

from __future__ import annotations

import copy
import functools
import sys
from dataclasses import dataclass
from typing import Sequence

import torch

from ckptsel.indicators.lm import ScoringLM


@dataclass
class Scored:
    """Log-likelihood of one continuation: the sum, per-token values, and whether greedy
    decoding would produce it (lm-eval's ``is_greedy``)."""

    logprob: float
    token_logprobs: list[float]
    is_greedy: bool


def _scoring(fn):
    """Run under ``torch.inference_mode`` with the model's CPU thread count."""
    @functools.wraps(fn)
    def wrapper(lm, *args, **kwargs):
        with torch.inference_mode(), lm.scoring_threads():
            return fn(lm, *args, **kwargs)
    return wrapper


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stderr, leave=False,
                dynamic_ncols=True, unit="seq")


def _batches(order: Sequence[int], lengths: Sequence[int], batch_size: int, max_tokens: int | None):
    """Consecutive slices of ``order`` (sorted by length) with at most ``batch_size`` rows and,
    if given, at most ``max_tokens`` padded tokens."""
    batch: list[int] = []
    for i in order:
        width = max([lengths[j] for j in batch] + [lengths[i]])
        if batch and (len(batch) >= batch_size or (max_tokens and width * (len(batch) + 1) > max_tokens)):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _score_rows(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position log-probability of ``targets`` and whether each is the argmax."""
    logp = torch.log_softmax(logits, dim=-1)
    tok = logp.gather(-1, targets[:, None]).squeeze(-1)
    return tok, logp.argmax(dim=-1) == targets


@_scoring
def loglikelihood(lm: ScoringLM, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                  batch_size: int = 16, max_tokens: int | None = None, progress: bool = False,
                  desc: str = "loglikelihood") -> list[Scored]:
    """Score ``(context_tokens, continuation_tokens)`` requests (lm-eval semantics, see module)."""
    L = lm.max_length
    pieces, owner = [], []  # requests of at most L continuation tokens, and the request each is part of
    for r, (ctx, cont) in enumerate(requests):
        if not ctx or not cont:
            raise ValueError("each request needs a non-empty context and continuation")
        for k in range(0, len(cont), L):
            pieces.append((list(ctx) + list(cont[:k]), list(cont[k:k + L])))
            owner.append(r)
    inputs, n_scored, targets = [], [], []
    for ctx, cont in pieces:
        whole = (ctx + cont)[-(L + 1):]
        inputs.append(whole[:-1])
        n_scored.append(len(cont))
        targets.append(list(cont))
    lengths = [len(x) for x in inputs]
    order = sorted(range(len(inputs)), key=lambda i: (-lengths[i], inputs[i]))
    out: list[Scored | None] = [None] * len(inputs)
    bar = _progress(len(inputs), desc, progress)
    for batch in _batches(order, lengths, batch_size, max_tokens):
        width = max(lengths[i] for i in batch)
        ids = torch.full((len(batch), width), lm.pad_id, dtype=torch.long)
        keep = torch.zeros((len(batch), width), dtype=torch.bool)
        flat_targets = []
        for r, i in enumerate(batch):
            n = lengths[i]
            ids[r, :n] = torch.tensor(inputs[i], dtype=torch.long)
            keep[r, n - n_scored[i]:n] = True
            flat_targets.extend(targets[i])
        f = lm.forward(ids.to(lm.device), keep=keep.to(lm.device))
        tok, greedy = _score_rows(f.logits, torch.tensor(flat_targets, device=f.logits.device))
        tok, greedy = tok.cpu().tolist(), greedy.cpu().tolist()
        pos = 0
        for i in batch:
            n = n_scored[i]
            vals = tok[pos:pos + n]
            out[i] = Scored(float(sum(vals)), vals, all(greedy[pos:pos + n]))
            pos += n
        bar.update(len(batch))
    bar.close()
    if len(pieces) == len(requests):
        return out  # type: ignore[return-value]
    merged: list[Scored | None] = [None] * len(requests)
    for r, s in zip(owner, out):
        m = merged[r]
        merged[r] = s if m is None else Scored(m.logprob + s.logprob, m.token_logprobs + s.token_logprobs,
                                               m.is_greedy and s.is_greedy)
    return merged  # type: ignore[return-value]


@_scoring
def loglikelihood_groups(lm: ScoringLM, groups: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]], *,
                         batch_size: int = 16, progress: bool = False,
                         desc: str = "multiple choice") -> list[list[Scored]]:
    """Score each group's continuations given its shared context, the context once per group.

    Returns, per group, one :class:`Scored` per continuation (same order)."""
    L = lm.max_length
    out: list[list[Scored] | None] = [None] * len(groups)
    shared, fallback = [], []
    for g, (ctx, conts) in enumerate(groups):
        if not ctx or not conts or any(not c for c in conts):
            raise ValueError("each group needs a non-empty context and non-empty continuations")
        fits = all(len(ctx) + len(c) <= L for c in conts)
        # Reading the cache with a padding mask costs about a second pass over the choices, so
        # sharing pays when the context tokens saved exceed the choices' tokens.
        worth = sum(len(c) for c in conts) < (len(conts) - 1) * len(ctx)
        (shared if fits and worth else fallback).append(g)
    bar = _progress(len(groups), desc, progress)
    if fallback:
        flat = [(groups[g][0], c) for g in fallback for c in groups[g][1]]
        scored = loglikelihood(lm, flat, batch_size=batch_size)
        pos = 0
        for g in fallback:
            k = len(groups[g][1])
            out[g] = scored[pos:pos + k]
            pos += k
        bar.update(len(fallback))
    ctx_len = {g: len(groups[g][0]) for g in shared}
    order = sorted(shared, key=lambda g: (-ctx_len[g], list(groups[g][0])))
    for batch in _batches(order, ctx_len, batch_size, None):
        _score_shared_batch(lm, [groups[g] for g in batch], out, batch)
        bar.update(len(batch))
    bar.close()
    return out  # type: ignore[return-value]


_CHOICE_CHUNK = 16  # rows per second-pass chunk in :func:`_score_shared_batch`


def _score_shared_batch(lm: ScoringLM, batch_groups, out, batch_ids) -> None:
    dev = lm.device
    n_ctx = [len(ctx) for ctx, _ in batch_groups]
    width = max(n_ctx)
    ids = torch.full((len(batch_groups), width), lm.pad_id, dtype=torch.long)
    keep = torch.zeros((len(batch_groups), width), dtype=torch.bool)
    for r, (ctx, _) in enumerate(batch_groups):
        ids[r, :len(ctx)] = torch.tensor(list(ctx), dtype=torch.long)
        keep[r, len(ctx) - 1] = True
    f = lm.forward(ids.to(dev), use_cache=True, keep=keep.to(dev))
    last_logp = torch.log_softmax(f.logits, dim=-1)  # [n_groups, V]: predicts each choice's first token
    # One row per (group, choice), each reading its group's context cache.
    row_group = [r for r, (_, conts) in enumerate(batch_groups) for _ in conts]
    conts = [list(c) for _, cs in batch_groups for c in cs]
    index = torch.tensor(row_group, dtype=torch.long, device=dev)
    first_tok = torch.tensor([c[0] for c in conts], dtype=torch.long, device=dev)
    first_lp = last_logp.index_select(0, index).gather(-1, first_tok[:, None]).squeeze(-1).cpu().tolist()
    first_greedy = (last_logp.index_select(0, index).argmax(-1) == first_tok).cpu().tolist()
    rest_lp: list[list[float]] = [[] for _ in conts]
    rest_greedy: list[list[bool]] = [[] for _ in conts]
    # Second pass over the choices' remaining tokens, rows sorted by length and cut into chunks
    # of similar length, so that padding stays within a chunk. ``lm.select`` reorders a cache in
    # place, so every chunk but the last selects its rows from a copy of the context cache.
    rest_len = [len(c) - 1 for c in conts]
    rows = sorted((r for r in range(len(conts)) if rest_len[r] > 0), key=lambda r: (-rest_len[r], r))
    chunks = list(_batches(rows, rest_len, _CHOICE_CHUNK, None))
    for ci, chunk in enumerate(chunks):
        base = f.past if ci == len(chunks) - 1 else copy.deepcopy(f.past)
        past = lm.select(base, torch.tensor([row_group[r] for r in chunk], dtype=torch.long, device=dev))
        rest_width = max(rest_len[r] for r in chunk)
        n_rows = len(chunk)
        inp = torch.full((n_rows, rest_width), lm.pad_id, dtype=torch.long)
        mask = torch.zeros((n_rows, width + rest_width), dtype=torch.long)
        pos = torch.zeros((n_rows, rest_width), dtype=torch.long)
        keep2 = torch.zeros((n_rows, rest_width), dtype=torch.bool)
        targets = []
        for j, r in enumerate(chunk):
            c, n, k = conts[r], n_ctx[row_group[r]], rest_len[r]
            mask[j, :n] = 1
            mask[j, width:width + k] = 1
            pos[j] = torch.arange(n, n + rest_width)
            inp[j, :k] = torch.tensor(c[:-1], dtype=torch.long)
            keep2[j, :k] = True
            targets.extend(c[1:])
        f2 = lm.forward(inp.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev), past=past,
                        keep=keep2.to(dev))
        tok, greedy = _score_rows(f2.logits, torch.tensor(targets, dtype=torch.long, device=dev))
        tok, greedy = tok.cpu().tolist(), greedy.cpu().tolist()
        p = 0
        for r in chunk:
            k = rest_len[r]
            rest_lp[r], rest_greedy[r] = tok[p:p + k], greedy[p:p + k]
            p += k
    r = 0
    for gi, (_, cs) in zip(batch_ids, batch_groups):
        scored = []
        for _ in cs:
            vals = [first_lp[r]] + rest_lp[r]
            scored.append(Scored(float(sum(vals)), vals, bool(first_greedy[r]) and all(rest_greedy[r])))
            r += 1
        out[gi] = scored


@_scoring
def greedy_generate(lm: ScoringLM, contexts: Sequence[Sequence[int]], *, until: Sequence[str],
                    max_new_tokens: int, batch_size: int = 16, progress: bool = False,
                    desc: str = "generate") -> list[str]:
    """Greedy continuations of token contexts, as lm-eval's ``HFLM.generate_until``.

    Each context is cut from the left to ``max_length − max_new_tokens`` tokens; decoding
    stops at EOS, at ``max_new_tokens``, or once the decoded text holds a stop string. The
    result is the decoded text cut before the first stop string (EOS's text counts as one).
    """
    L = lm.max_length
    if max_new_tokens >= L:
        raise ValueError(f"max_new_tokens {max_new_tokens} must be below max_length {L}")
    eos = lm.eos_token_id
    stops = [s for s in until if s]
    if eos is not None:
        stops.append(lm.decode([eos]))
    ctxs = [list(c)[-(L - max_new_tokens):] for c in contexts]
    lengths = [len(c) for c in ctxs]
    order = sorted(range(len(ctxs)), key=lambda i: (-lengths[i], ctxs[i]))
    out: list[str | None] = [None] * len(ctxs)
    bar = _progress(len(ctxs), desc, progress)
    dev = lm.device
    for batch in _batches(order, lengths, batch_size, None):
        n = torch.tensor([lengths[i] for i in batch])
        width = int(n.max())
        ids = torch.full((len(batch), width), lm.pad_id, dtype=torch.long)
        keep = torch.zeros((len(batch), width), dtype=torch.bool)
        for r, i in enumerate(batch):
            ids[r, :lengths[i]] = torch.tensor(ctxs[i], dtype=torch.long)
            keep[r, lengths[i] - 1] = True
        f = lm.forward(ids.to(dev), use_cache=True, keep=keep.to(dev))
        past = f.past
        generated: list[list[int]] = [[] for _ in batch]
        done = [False] * len(batch)
        mask = torch.zeros((len(batch), width + max_new_tokens), dtype=torch.long)
        for r in range(len(batch)):
            mask[r, :int(n[r])] = 1
        logits = f.logits
        for t in range(max_new_tokens):
            nxt = logits.argmax(dim=-1).cpu().tolist()
            for r, tok in enumerate(nxt):
                if done[r]:
                    continue
                generated[r].append(tok)
                if tok == eos or any(s in lm.decode(generated[r]) for s in stops):
                    done[r] = True
            if all(done) or t == max_new_tokens - 1:
                break
            mask[:, width + t] = 1
            step = torch.tensor(nxt, dtype=torch.long)[:, None]
            f = lm.forward(step.to(dev), attention_mask=mask[:, :width + t + 1].to(dev),
                           position_ids=(n + t)[:, None].to(dev), past=past, use_cache=True,
                           keep=torch.ones((len(batch), 1), dtype=torch.bool, device=dev))
            past, logits = f.past, f.logits
        for r, i in enumerate(batch):
            text = lm.decode(generated[r])
            for s in stops:
                text = text.split(s)[0]
            out[i] = text
        bar.update(len(batch))
    bar.close()
    return out  # type: ignore[return-value]
