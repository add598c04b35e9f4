"""k-shot tasks: multiple choice by log-likelihood, generation by exact match.

Prompts follow lm-evaluation-harness (v0.4, ``ConfigurableTask.fewshot_context`` and
``build_qa_turn``) for a task with ``doc_to_text: "{{query}}"``, ``doc_to_choice:
"{{choices}}"`` and ``doc_to_target: "{{gold}}"`` (generation: ``"{{answer}}"``):

- few-shot examples are drawn by ``random.Random(fewshot_seed)``, one generator for the task
  advanced through the test rows in file order: ``rnd.sample(pool, k)``, or, when the pool is
  the test file itself (no ``fewshot`` file), ``rnd.sample(pool, k + 1)`` without the row
  being evaluated, first ``k`` kept (lm-eval's ``ContextSampler.sample``);
- context = ``Σ_j (query_j + target_delimiter + answer_j + fewshot_delimiter) + query``;
- multiple choice: each choice is the continuation ``target_delimiter + choice``, scored by
  lm-eval's ``loglikelihood`` tokenisation; ``acc = [argmax_i LL_i = gold]`` and
  ``acc_norm = [argmax_i LL_i / len(choice_i) = gold]`` with ``len`` in characters of the
  choice string (lm-eval's ``completion_len``; ties go to the first index, as ``np.argmax``);
- generation: greedy until a stop string (``until``, plus EOS) or ``max_gen_tokens``;
  ``exact_match = [generation.strip() == answer.strip()]`` (lm-eval's ``exact_match`` after
  its ``remove_whitespace`` filter).

Task scores are means over test rows. Per-example predictions are kept per metric, so the
instability score of a metric reads that metric's own picks: the chosen index ``argmax LL``
(``acc``) and ``argmax LL/len`` (``acc_norm``) for multiple choice, the correct flag
(``exact_match``) for generation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from ckptsel.errors import CkptselError
from ckptsel.indicators.spec import TaskSpec, read_jsonl


@dataclass
class TaskResult:
    metrics: dict[str, float]
    predictions: dict[str, np.ndarray]  # metric -> int16 array, one value per test row


def load_rows(task: TaskSpec) -> tuple[list[dict], list[dict] | None]:
    test = read_jsonl(task.test)
    if task.limit:
        test = test[:task.limit]
    pool = None if task.fewshot is None else read_jsonl(task.fewshot)
    for path, rows in ((task.test, test), (task.fewshot, pool or [])):
        for i, row in enumerate(rows):
            if not isinstance(row.get("query"), str):
                raise CkptselError(f"{path} row {i + 1} has no string 'query'")
            if task.type == "multiple_choice":
                choices, gold = row.get("choices"), row.get("gold")
                if not (isinstance(choices, list) and choices and all(isinstance(c, str) and c for c in choices)):
                    raise CkptselError(f"{path} row {i + 1}: 'choices' must be a list of non-empty strings")
                if not isinstance(gold, int) or not 0 <= gold < len(choices):
                    raise CkptselError(f"{path} row {i + 1}: 'gold' must index into 'choices'")
            elif not isinstance(row.get("answer"), str):
                raise CkptselError(f"{path} row {i + 1} has no string 'answer'")
    if not test:
        raise CkptselError(f"task {task.name}: {task.test} has no rows")
    if task.num_fewshot:
        n_pool = len(pool) if pool is not None else len(test) - 1
        if n_pool < task.num_fewshot:
            raise CkptselError(f"task {task.name} asks for {task.num_fewshot} few-shot examples but its pool "
                               f"has {n_pool}; lower num_fewshot or add a fewshot file")
    return test, pool


def _answer(task: TaskSpec, row: dict) -> str:
    return row["choices"][row["gold"]] if task.type == "multiple_choice" else row["answer"]


def build_contexts(task: TaskSpec, test: list[dict], pool: list[dict] | None) -> list[str]:
    """The prompt of every test row (few-shot examples drawn as lm-eval's sampler does)."""
    rnd = random.Random(task.fewshot_seed)
    k = task.num_fewshot
    contexts = []
    for row in test:
        if k == 0:
            shots = []
        elif pool is not None:
            shots = rnd.sample(pool, k)
        else:
            shots = [x for x in rnd.sample(test, k + 1) if x != row][:k]
            if len(shots) < k:
                shots = rnd.sample([x for x in test if x != row], k)
        prefix = "".join(s["query"] + task.target_delimiter + _answer(task, s) + task.fewshot_delimiter
                         for s in shots)
        contexts.append(prefix + row["query"])
    return contexts


def run_task(lm, task: TaskSpec, *, batch_size: int = 16, progress: bool = False) -> TaskResult:
    from ckptsel.indicators.batching import greedy_generate, loglikelihood_groups

    test, pool = load_rows(task)
    contexts = build_contexts(task, test, pool)
    if task.type == "multiple_choice":
        encoded = iter(lm.encode_pairs([(ctx, task.target_delimiter + c)
                                        for ctx, row in zip(contexts, test) for c in row["choices"]]))
        groups, spans = [], []
        for row in test:
            pairs = [next(encoded) for _ in row["choices"]]
            start = len(groups)
            if all(p[0] == pairs[0][0] for p in pairs):
                groups.append((pairs[0][0], [cont for _, cont in pairs]))
            else:  # an empty context tokenises per choice: one group per choice
                groups.extend((c, [cont]) for c, cont in pairs)
            spans.append((start, len(groups)))
        scored = loglikelihood_groups(lm, groups, batch_size=batch_size, progress=progress,
                                      desc=f"kshot/{task.name}")
        lls = [[s.logprob for g in scored[a:b] for s in g] for a, b in spans]
        return score_multiple_choice(test, lls)
    ids = lm.tok_encode_many(contexts)
    gens = greedy_generate(lm, ids, until=task.until, max_new_tokens=task.max_gen_tokens,
                           batch_size=batch_size, progress=progress, desc=f"kshot/{task.name}")
    correct = np.array([g.strip() == row["answer"].strip() for g, row in zip(gens, test)], dtype=np.int16)
    return TaskResult({"exact_match": float(correct.mean())}, {"exact_match": correct})


def score_multiple_choice(test: list[dict], lls: list[list[float]]) -> TaskResult:
    """acc and acc_norm from per-choice log-likelihoods (lm-eval's ``process_results``)."""
    acc, acc_norm, picks, picks_norm = [], [], [], []
    for row, ll in zip(test, lls):
        ll = np.asarray(ll, dtype=np.float64)
        lengths = np.array([float(len(c)) for c in row["choices"]])
        pred = int(np.argmax(ll))
        pred_norm = int(np.argmax(ll / lengths))
        acc.append(pred == row["gold"])
        acc_norm.append(pred_norm == row["gold"])
        picks.append(pred)
        picks_norm.append(pred_norm)
    return TaskResult({"acc": float(np.mean(acc)), "acc_norm": float(np.mean(acc_norm))},
                      {"acc": np.array(picks, dtype=np.int16), "acc_norm": np.array(picks_norm, dtype=np.int16)})
