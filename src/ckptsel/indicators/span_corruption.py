"""Span-corruption perplexity (PPL-SC) for decoder-only models.

Zeng et al., "Can Pre-training Indicators Reliably Predict Fine-tuning Outcomes of LLMs?"
(arXiv 2504.12491) use the perplexity of span-corrupted text as a pre-training indicator.
The corruption is T5's (Raffel et al., arXiv 1910.10683, ``random_spans_noise_mask`` in
t5/data/preprocessors.py); ckptsel adapts it to decoder-only models as follows.

Definition, per document ``d`` (index ``i`` in the corpus file):

1. Units are whitespace-separated words with their leading whitespace
   (``re.findall(r"\\s*\\S+", d)``), cut to the first ``max_words``. Corrupting words rather
   than model tokens makes the spans the same for every checkpoint, whatever its tokenizer.
2. ``mask = random_spans_noise_mask(n_words, noise_density, mean_span_length, rng)`` with
   ``rng = numpy.random.default_rng([seed, i])``: the same seed gives the same spans for
   every checkpoint and every run.
3. The noise spans ``s_0, s_1, ...`` (maximal runs of masked words) become sentinels:
   the context ``C`` is the document with span ``s_k`` replaced by its leading whitespace and
   the plain-text sentinel ``<extra_id_k>``; the target is
   ``T = "<extra_id_0> " + s_0.lstrip() + "<extra_id_1> " + s_1.lstrip() + ...``.
   Sentinels are plain strings tokenised by the model's own tokenizer (tiny tokenizers have
   no special sentinel tokens).
4. The model reads ``[prefix] + enc(C + "\\n") + enc(T)`` (``enc`` without special tokens;
   the prefix is BOS, else EOS) and only the target tokens ``enc(T)`` are scored. When the
   sequence is longer than ``max_length + 1`` tokens the context is cut from the left
   (lm-eval's rule for log-likelihood requests).
5. A document whose target is longer than ``max_length`` tokens is scored in windows instead:
   its (cut) words are split into ``n`` consecutive windows of equal word count (the first
   ``n_words mod n`` one word longer; a window's first word loses its leading whitespace),
   each corrupted as in 2-4 with ``rng = numpy.random.default_rng([seed, i, n, j])`` for
   window ``j``, with ``n >= 2`` the smallest count for which every window's whole sequence
   fits (at most ``max_length + 1`` tokens, so no context is cut). A window of one word has no
   noise and is left out. Documents whose target fits are unchanged by this rule.

Features over the corpus's scored sequences ``d`` (documents or windows), with ``NLL_d`` the
summed negative log-likelihood of ``enc(T_d)``:

- ``token_perplexity = exp(Σ NLL_d / Σ |enc(T_d)|)``  (PPL-SC)
- ``bits_per_byte    = Σ NLL_d / Σ bytes(T_d) / ln 2``
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ckptsel.errors import CkptselError

SENTINEL = "<extra_id_{}>"


def random_spans_noise_mask(length: int, noise_density: float, mean_noise_span_length: float,
                            rng: np.random.Generator) -> np.ndarray:
    """T5's ``random_spans_noise_mask`` in NumPy: a boolean mask of ``length`` items, about
    ``noise_density`` of them noise, in spans of mean length ``mean_noise_span_length``.

    As in T5: ``n_noise = clip(round(length·density), 1, length−1)``,
    ``n_spans = max(round(n_noise / mean_span), 1)`` (here also at most the number of
    non-noise items); noise and non-noise items are each cut into ``n_spans`` random
    non-empty segments (a shuffled choice of segment starts) and interleaved
    non-noise, noise, non-noise, ..., so the sequence starts with non-noise and ends with
    noise. The noise segmentation is drawn before the non-noise one.
    """
    orig_length = length
    length = max(length, 2)
    n_noise = int(np.round(length * noise_density))
    n_noise = min(max(n_noise, 1), length - 1)
    n_nonnoise = length - n_noise
    n_spans = max(int(np.round(n_noise / mean_noise_span_length)), 1)
    n_spans = min(n_spans, n_noise, n_nonnoise)

    def segmentation(n_items: int) -> np.ndarray:
        starts = np.arange(n_items - 1) < n_spans - 1
        first_in_segment = np.concatenate([[0], rng.permutation(starts)])
        segment_id = np.cumsum(first_in_segment)
        return np.bincount(segment_id, minlength=n_spans)

    noise_lengths = segmentation(n_noise)
    nonnoise_lengths = segmentation(n_nonnoise)
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
    span_starts = np.cumsum(interleaved)[:-1]
    indicator = np.zeros(length, dtype=np.int64)
    indicator[span_starts] = 1
    span_num = np.cumsum(indicator)
    return (span_num % 2 == 1)[:orig_length]


def split_words(text: str) -> list[str]:
    """Whitespace-separated words, each with its leading whitespace."""
    return re.findall(r"\s*\S+", text)


@dataclass(frozen=True)
class Corrupted:
    context: str
    target: str
    mask: np.ndarray


def apply_sentinels(words: Sequence[str], mask: Sequence[bool]) -> tuple[str, str]:
    """``(context, target)`` of words (with leading whitespace) under a noise mask: each run
    of masked words ``s_k`` becomes ``<lead ws><extra_id_k>`` in the context and
    ``<extra_id_k> + " " + s_k.lstrip()`` in the target."""
    context, target, span = [], [], -1
    for i, (w, noise) in enumerate(zip(words, mask)):
        if not noise:
            context.append(w)
            continue
        if i == 0 or not mask[i - 1]:
            span += 1
            context.append(w[:len(w) - len(w.lstrip())] + SENTINEL.format(span))
            target.append(SENTINEL.format(span) + " " + w.lstrip())
        else:
            target.append(w)
    return "".join(context), "".join(target)


def corrupt_words(words: Sequence[str], rng: np.random.Generator, noise_density: float = 0.15,
                  mean_span_length: float = 3.0) -> Corrupted:
    """The corrupted context and sentinel target of words (with leading whitespace)."""
    mask = random_spans_noise_mask(len(words), noise_density, mean_span_length, rng)
    context, target = apply_sentinels(words, mask)
    return Corrupted(context, target, mask)


def corrupt(text: str, *, doc_index: int, seed: int, noise_density: float = 0.15,
            mean_span_length: float = 3.0, max_words: int = 256) -> Corrupted:
    """The corrupted context and sentinel target of one document (see module docstring)."""
    return corrupt_words(split_words(text)[:max_words], np.random.default_rng([seed, doc_index]),
                         noise_density, mean_span_length)


def windows(words: Sequence[str], n: int) -> list[list[str]]:
    """``words`` in ``n`` consecutive windows of equal size (the first ``len mod n`` one longer),
    each window's first word without its leading whitespace."""
    size, extra = divmod(len(words), n)
    out, start = [], 0
    for j in range(n):
        end = start + size + (j < extra)
        chunk = list(words[start:end])
        out.append([chunk[0].lstrip()] + chunk[1:])
        start = end
    return out


def _encode(lm, c: Corrupted) -> tuple[list[int], list[int]]:
    """``([prefix] + enc(C + "\\n"), enc(T))``: the request of one corrupted sequence."""
    ctx = [lm.prefix_token_id] + lm.tok_encode(c.context + "\n", add_special_tokens=False)
    return ctx, lm.tok_encode(c.target, add_special_tokens=False)


def document_requests(lm, text: str, *, doc_index: int, seed: int, noise_density: float = 0.15,
                      mean_span_length: float = 3.0, max_words: int = 256) -> list[tuple[list[int], list[int], int]]:
    """``(context tokens, target tokens, target bytes)`` scored for one document: the document
    itself when its target fits ``lm.max_length``, else its windows (steps 4-5 of the module)."""
    c = corrupt(text, doc_index=doc_index, seed=seed, noise_density=noise_density,
                mean_span_length=mean_span_length, max_words=max_words)
    if not c.target:
        return []
    ctx, tgt = _encode(lm, c)
    if len(tgt) <= lm.max_length:
        return [(ctx, tgt, len(c.target.encode("utf-8")))]
    words = split_words(text)[:max_words]
    for n in range(2, len(words) + 1):
        parts = [corrupt_words(chunk, np.random.default_rng([seed, doc_index, n, j]), noise_density, mean_span_length)
                 for j, chunk in enumerate(windows(words, n))]
        encoded = [(*_encode(lm, w), len(w.target.encode("utf-8"))) for w in parts if w.target]
        if all(len(ctx) + len(tgt) <= lm.max_length + 1 for ctx, tgt, _ in encoded):
            return encoded
    raise CkptselError(f"span-corruption document {doc_index} does not fit max_length {lm.max_length} even "
                       "in one-word windows; raise max_length in the spec")


def span_corruption_perplexity(lm, documents: Sequence[str], *, seed: int, noise_density: float = 0.15,
                               mean_span_length: float = 3.0, max_words: int = 256, batch_size: int = 16,
                               progress: bool = False, desc: str = "span corruption") -> dict[str, float]:
    """``token_perplexity`` (PPL-SC) and ``bits_per_byte`` of the targets (see module)."""
    from ckptsel.indicators.batching import loglikelihood

    requests, n_bytes = [], 0
    for i, text in enumerate(documents):
        for ctx, tgt, size in document_requests(lm, text, doc_index=i, seed=seed, noise_density=noise_density,
                                                mean_span_length=mean_span_length, max_words=max_words):
            requests.append((ctx, tgt))
            n_bytes += size
    scored = loglikelihood(lm, requests, batch_size=batch_size, progress=progress, desc=desc)
    nll = -math.fsum(s.logprob for s in scored)
    n_tokens = sum(len(t) for _, t in requests)
    return {"token_perplexity": math.exp(nll / n_tokens), "bits_per_byte": nll / n_bytes / math.log(2)}
