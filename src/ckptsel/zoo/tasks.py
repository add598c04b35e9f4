"""The micro zoo's fine-tuning tasks and indicator data, built from the held-out documents.

    python -m ckptsel.zoo.tasks [--out data/zoo]      # after python -m ckptsel.zoo.corpus

The held-out documents of each domain (``<domain>.heldout.jsonl``, see ``ckptsel.zoo.corpus``)
are shuffled with ``random.Random(SEED)`` and given one of three roles, so no text serves
two of them:

- ``indicator`` (the first :data:`INDICATOR_FRACTION`): the text indicators may read:
  ``indicators/<domain>.jsonl`` (perplexity corpora) and the k-shot tasks below;
- ``sft_train`` (half of the rest): the training splits of the fine-tuning tasks;
- ``sft_eval`` (the other half): their evaluation splits, the labels.

Sentences are cut as in ``ckptsel.indicators.build_data.sentences`` and kept when they have
30-300 characters, at least 5 words, and occur once in the whole corpus (pretrain and held-out,
all domains), so no task row repeats text a model was trained on or another role holds.
Written files (every random choice from one ``random.Random(SEED)`` per file, so rebuilding
gives byte-identical files):

- ``sft/zoo_domain.{train,eval}.jsonl`` (multiple choice, a classification): ``Passage: <a
  sentence>\\nSource:`` with the fixed choices :data:`DOMAIN_LABELS`; balanced over domains.
- ``sft/zoo_ending.{train,eval}.jsonl`` (multiple choice): the start of a sentence; 4 choices,
  its own ending and the endings of 3 other sentences of the same role, one per domain.
- ``sft/zoo_cloze.{train,eval}.jsonl`` (prompt/completion, cloze QA): a sentence with one word
  of 4+ letters replaced by ``___``, then ``\\nMissing word:``; the completion is `` <word>``.
- ``indicators/<domain>.jsonl``: the indicator documents, ``{"text"}``;
- ``indicators/zoo_kshot_ending.{test,train}.jsonl`` + ``.yaml``: sentence endings, as
  zoo_ending, zero-shot, for ``ckptsel indicators``;
- ``indicators/zoo_kshot_domain.{test,train}.jsonl`` + ``.yaml``: the domain of a sentence,
  as zoo_domain, 3-shot (the shots drawn from the train file).

Rows: multiple choice ``{"query", "choices", "gold"}``; prompt/completion ``{"prompt",
"completion"}``. Configs: ``configs/sft/zoo_{domain,ending,cloze}.yaml``,
``configs/indicators/zoo.yaml``.
"""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

from ckptsel.errors import CkptselError
from ckptsel.indicators.build_data import sentences
from ckptsel.zoo.corpus import DOMAINS, load_domain, write_jsonl

SEED = 20241105
INDICATOR_FRACTION = 1 / 3
ROLES = ("indicator", "sft_train", "sft_eval")
DOMAIN_LABELS = ("Python documentation", "software license", "copyright notice")
# Rows per task: (train, eval). Classification rows are split evenly over the domains.
SIZES = {"zoo_domain": (120, 150), "zoo_ending": (200, 150), "zoo_cloze": (240, 150),
         "zoo_kshot_ending": (30, 120), "zoo_kshot_domain": (15, 90)}
_WORD = re.compile(r"[A-Za-z]{4,}")


def roles(docs: list[str], domain: str) -> dict[str, list[str]]:
    """Split a domain's held-out documents into the three roles (see the module docstring)."""
    docs = list(docs)
    random.Random(f"{SEED}/roles/{domain}").shuffle(docs)
    n_ind = round(len(docs) * INDICATOR_FRACTION)
    n_train = (len(docs) - n_ind) // 2
    return {"indicator": docs[:n_ind], "sft_train": docs[n_ind:n_ind + n_train],
            "sft_eval": docs[n_ind + n_train:]}


def good_sentence(s: str) -> bool:
    return 30 <= len(s) <= 300 and len(s.split()) >= 5


def doc_sentences(docs: list[str], unique: set[str]) -> list[str]:
    """Usable sentences of ``docs`` in order, keeping only those in ``unique``."""
    out, seen = [], set()
    for doc in docs:
        for s in sentences(doc):
            if good_sentence(s) and s in unique and s not in seen:
                seen.add(s)
                out.append(s)
    return out


def _mc(rnd: random.Random, query: str, answer: str, pool: list[str], n_choices: int = 4) -> dict:
    distractors: list[str] = []
    while len(distractors) < n_choices - 1:
        d = rnd.choice(pool)
        if d != answer and d not in distractors:
            distractors.append(d)
    gold = rnd.randrange(n_choices)
    return {"query": query, "choices": distractors[:gold] + [answer] + distractors[gold:], "gold": gold}


def _take(rows: list, n: int, what: str) -> list:
    if len(rows) < n:
        raise CkptselError(f"only {len(rows)} rows for {what}, {n} needed; the held-out text is too small "
                           f"(rebuild data/zoo with python -m ckptsel.zoo.corpus)")
    return rows[:n]


def domain_rows(rnd: random.Random, by_domain: dict[str, list[str]], n: int, what: str) -> list[dict]:
    """Balanced classification rows: ``n // len(DOMAINS)`` sentences of each domain, shuffled."""
    rows = []
    for d, domain in enumerate(DOMAINS):
        sents = list(by_domain[domain])
        rnd.shuffle(sents)
        rows += [{"query": f"Passage: {s}\nSource:", "choices": list(DOMAIN_LABELS), "gold": d}
                 for s in _take(sents, n // len(DOMAINS), f"{what} ({domain})")]
    rnd.shuffle(rows)
    return rows


def ending_rows(rnd: random.Random, by_domain: dict[str, list[str]], n: int, what: str) -> list[dict]:
    """Sentence-ending rows: a sentence of 8+ words cut at a random word between a third and two
    thirds of it; 4 choices, its own ending and the endings of 3 other sentences, one from each
    domain (each cut the same way), so a model that knows the domains can rule some out."""
    cuts = {}
    for domain in DOMAINS:
        cuts[domain] = []
        for s in by_domain[domain]:
            words = s.split()
            if len(words) >= 8:
                k = rnd.randint(len(words) // 3, 2 * len(words) // 3)
                cuts[domain].append((" ".join(words[:k]), " ".join(words[k:])))
    pools = {d: sorted({end for _, end in c}) for d, c in cuts.items()}
    rows = []
    for domain in DOMAINS:
        for start, end in cuts[domain]:
            distractors = []
            for d in DOMAINS:
                pick = rnd.choice(pools[d])
                while pick == end or pick in distractors:
                    pick = rnd.choice(pools[d])
                distractors.append(pick)
            gold = rnd.randrange(4)
            rows.append({"query": start, "choices": distractors[:gold] + [end] + distractors[gold:], "gold": gold})
    rnd.shuffle(rows)
    return _take(rows, n, what)


def cloze_rows(rnd: random.Random, by_domain: dict[str, list[str]], n: int, what: str) -> list[dict]:
    """Cloze rows: one word of 4+ letters (not the first) blanked; the completion is that word."""
    rows = []
    for domain in DOMAINS:
        for s in by_domain[domain]:
            words = s.split()
            spots = [i for i, w in enumerate(words) if i > 0 and _WORD.fullmatch(w)]
            if spots:
                i = rnd.choice(spots)
                masked = " ".join(words[:i] + ["___"] + words[i + 1:])
                rows.append({"prompt": f"{masked}\nMissing word:", "completion": f" {words[i]}"})
    rnd.shuffle(rows)
    return _take(rows, n, what)


_KSHOT_YAML = """\
# {title} Generated by python -m ckptsel.zoo.tasks from held-out zoo text
# that no fine-tuning task uses (see data/zoo/README.md).
name: {name}
type: multiple_choice
test: {name}.test.jsonl       # {n_test} rows: {{"query", "choices", "gold"}}
fewshot: {name}.train.jsonl   # {n_train} rows
num_fewshot: {shots}
fewshot_seed: 1234
target_delimiter: " "
fewshot_delimiter: "\\n\\n"
"""


def build(out: str | Path, corpus_dir: str | Path | None = None) -> dict[str, int]:
    """Write the task and indicator files under ``out`` from the held-out documents in
    ``corpus_dir`` (default: ``out``); returns rows per written file stem."""
    out = Path(out)
    corpus_dir = out if corpus_dir is None else Path(corpus_dir)
    by_role = {r: {} for r in ROLES}
    texts = []
    for domain in DOMAINS:
        for split in ("pretrain", "heldout"):
            texts += [" ".join(doc.split()) for doc in load_domain(domain, split, root=corpus_dir)]
        for role, docs in roles(load_domain(domain, "heldout", root=corpus_dir), domain).items():
            by_role[role][domain] = docs
    # A sentence is usable when it occurs once in the whole corpus, also inside longer sentences.
    everything = "\n".join(texts)
    candidates = {s for docs in by_role.values() for ds in docs.values() for d in ds for s in sentences(d)}
    unique = {s for s in candidates if good_sentence(s) and everything.count(s) == 1}
    sents = {r: {d: doc_sentences(docs, unique) for d, docs in by_role[r].items()} for r in ROLES}
    counts: dict[str, int] = {}

    def write(path: Path, rows: list[dict]) -> None:
        write_jsonl(path, rows)
        counts[str(path.relative_to(out))] = len(rows)

    for name, role, part in (("zoo_domain", "sft_train", 0), ("zoo_domain", "sft_eval", 1),
                             ("zoo_ending", "sft_train", 0), ("zoo_ending", "sft_eval", 1),
                             ("zoo_cloze", "sft_train", 0), ("zoo_cloze", "sft_eval", 1)):
        rnd = random.Random(f"{SEED}/{name}/{role}")
        n, what = SIZES[name][part], f"{name} {('train', 'eval')[part]}"
        if name == "zoo_domain":
            rows = domain_rows(rnd, sents[role], n, what)
        elif name == "zoo_ending":
            rows = ending_rows(rnd, sents[role], n, what)
        else:
            rows = cloze_rows(rnd, sents[role], n, what)
        write(out / "sft" / f"{name}.{('train', 'eval')[part]}.jsonl", rows)

    ind = out / "indicators"
    for domain in DOMAINS:
        write(ind / f"{domain}.jsonl", [{"text": t} for t in by_role["indicator"][domain]])
    # The k-shot tasks share the indicator documents: sentence-ending rows first, then the domain
    # rows from sentences that no ending row was cut from.
    rnd = random.Random(f"{SEED}/zoo_kshot_ending")
    n_train, n_test = SIZES["zoo_kshot_ending"]
    rows = ending_rows(rnd, sents["indicator"], n_train + n_test, "zoo_kshot_ending")
    write(ind / "zoo_kshot_ending.test.jsonl", rows[:n_test])
    write(ind / "zoo_kshot_ending.train.jsonl", rows[n_test:])
    used = {f"{r['query']} {r['choices'][r['gold']]}" for r in rows}
    rnd = random.Random(f"{SEED}/zoo_kshot_domain")
    n_train, n_test = SIZES["zoo_kshot_domain"]
    free = {d: [s for s in ss if s not in used] for d, ss in sents["indicator"].items()}
    rows = domain_rows(rnd, free, n_train + n_test, "zoo_kshot_domain")
    write(ind / "zoo_kshot_domain.test.jsonl", rows[:n_test])
    write(ind / "zoo_kshot_domain.train.jsonl", rows[n_test:])
    for name, title, shots in (("zoo_kshot_ending", "Which ending completes the sentence? Zero-shot.", 0),
                               ("zoo_kshot_domain", "Which domain is this sentence from? 3-shot.", 3)):
        n_train, n_test = SIZES[name]
        text = _KSHOT_YAML.format(title=title, name=name, n_test=n_test, n_train=n_train, shots=shots)
        (ind / f"{name}.yaml").write_text(text, encoding="utf-8")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/zoo", help="output directory (default: data/zoo)")
    parser.add_argument("--corpus", help="directory with <domain>.heldout.jsonl (default: --out)")
    args = parser.parse_args(argv)
    for name, n in build(args.out, args.corpus).items():
        print(f"{name}: {n} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
