"""Perplexity on text corpora, as lm-evaluation-harness's ``loglikelihood_rolling`` tasks.

Each document is tokenised whole (``tok_encode``) and cut into the rolling windows of
``lm_eval.utils.get_rolling_token_windows(tokens, prefix_token, max_seq_len=L, context_len=1)``
made disjoint by ``make_disjoint_window`` (:func:`rolling_windows`):

- window 1 reads ``[prefix] + t[0:L-1]`` and predicts ``t[0:L]`` (the prefix token is BOS,
  else EOS);
- each later full window predicts the next ``L`` tokens ``t[s:s+L]`` from input
  ``t[s-1:s+L-1]``;
- the last window, predicting the ``r < L`` remaining tokens, is NOT disjoint: its input is
  the full ``L`` tokens ``t[n-L-1:n-1]`` ending just before the last token, and only its
  last ``r`` positions are scored.

Every token is predicted once; a document's log-likelihood ``LL_d`` is the sum. Features
(lm-eval's ``wikitext`` metrics, lm_eval/tasks/wikitext/preprocess_wikitext.py
``process_results``, with the ``weighted_perplexity`` and ``bits_per_byte`` aggregations of
lm_eval/api/metrics.py; our documents are scored as written, with no detokenizer), with sums
over the documents ``d`` of the corpus:

- ``bits_per_byte   = −Σ LL_d / Σ bytes_d / ln 2``   (bytes of the UTF-8 text)
- ``byte_perplexity = exp(−Σ LL_d / Σ bytes_d)``
- ``word_perplexity = exp(−Σ LL_d / Σ words_d)``     (``words_d = len(re.split(r"\\s+", d))``,
  lm-eval's ``count_words``)
- ``token_perplexity = exp(−Σ LL_d / Σ tokens_d)``  (tokens of the model's tokenizer; not
  comparable across tokenizers, unlike bits per byte)
"""

from __future__ import annotations

import math
import re
from typing import Iterator, Sequence

from ckptsel.indicators.batching import loglikelihood
from ckptsel.indicators.lm import ScoringLM


def get_rolling_token_windows(tokens: Sequence[int], prefix_token: int, max_seq_len: int,
                              context_len: int) -> Iterator[tuple[list[int], list[int]]]:
    """``(input_tokens, pred_tokens)`` windows; the same rule as lm_eval.utils's function."""
    assert 1 <= context_len <= max_seq_len
    tokens = list(tokens)
    if not tokens:
        return
    pred_len = max_seq_len - context_len + 1
    first = min(max_seq_len, len(tokens))
    yield [prefix_token] + tokens[:first - 1], tokens[:first]
    predicted = first
    while predicted < len(tokens):
        window_pred_len = min(len(tokens) - predicted, pred_len)
        window_end = predicted + window_pred_len
        yield tokens[window_end - max_seq_len - 1:window_end - 1], tokens[window_end - window_pred_len:window_end]
        predicted += window_pred_len


def make_disjoint_window(pair: tuple[list[int], list[int]]) -> tuple[list[int], list[int]]:
    """Drop the context tokens that the prediction window also covers (lm_eval.utils)."""
    a, b = pair
    return a[:len(a) - (len(b) - 1)], b


def rolling_windows(tokens: Sequence[int], prefix_token: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """The ``(context, continuation)`` requests lm-eval's ``HFLM.loglikelihood_rolling`` makes."""
    return [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, prefix_token, max_length, 1)]


def count_words(text: str) -> int:
    """lm-eval's ``count_words``: ``len(re.split(r"\\s+", text))``."""
    return len(re.split(r"\s+", text))


def count_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def corpus_perplexity(lm: ScoringLM, documents: Sequence[str], *, batch_size: int = 16,
                      progress: bool = False, desc: str = "perplexity") -> dict[str, float]:
    """The four perplexity features of a corpus (names without the ``ppl/<corpus>/`` prefix)."""
    requests, owner = [], []
    n_tokens = 0
    for d, tokens in enumerate(lm.tok_encode_many(documents)):
        n_tokens += len(tokens)
        for w in rolling_windows(tokens, lm.prefix_token_id, lm.max_length):
            requests.append(w)
            owner.append(d)
    scored = loglikelihood(lm, requests, batch_size=batch_size, progress=progress, desc=desc)
    total_ll = math.fsum(s.logprob for s in scored)
    n_bytes = sum(count_bytes(t) for t in documents)
    n_words = sum(count_words(t) for t in documents)
    return perplexity_features(total_ll, n_tokens=n_tokens, n_bytes=n_bytes, n_words=n_words)


def perplexity_features(total_loglikelihood: float, *, n_tokens: int, n_bytes: int, n_words: int) -> dict[str, float]:
    """bits_per_byte, byte/word/token perplexity from a summed log-likelihood (see module)."""
    nll = -total_loglikelihood
    return {
        "bits_per_byte": nll / n_bytes / math.log(2),
        "byte_perplexity": math.exp(nll / n_bytes),
        "word_perplexity": math.exp(nll / n_words),
        "token_perplexity": math.exp(nll / n_tokens) if n_tokens else float("nan"),
    }
