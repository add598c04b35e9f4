"""Build the small corpora and k-shot tasks under ``data/`` from text on every machine.

    python -m ckptsel.indicators.build_data [--out data]

Sources: docstrings of Python 3.11 standard-library modules that are NOT in
``ckptsel.tiny``'s training text (so they are held out from the tiny models), and Debian's
license texts in ``/usr/share/common-licenses``. Every random choice uses
``random.Random(SEED)``; on the same Python minor version and Debian release the output is
byte-identical. Written files (see ``data/README.md``):

- ``corpora/stdlib_docs.jsonl``: held-out docstrings, one document each (``{"text"}``);
- ``corpora/licenses.jsonl``: seven license texts, one document each (long: several windows);
- ``tasks/stdlib_mc.{test,train}.jsonl``: which function does this docstring describe?
  4 choices (function names, mixed lengths);
- ``tasks/licenses_next.{test,train}.jsonl``: which sentence comes next in a license?
  4 choices (sentences, mixed lengths);
- ``tasks/stdlib_cloze.{test,train}.jsonl``: the missing last word of a docstring sentence
  (generative, exact match).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import random
import re
import warnings
from pathlib import Path

SEED = 20240531
HELD_OUT_MODULES = (
    "abc", "ast", "bdb", "cmd", "code", "codeop", "colorsys", "compileall", "configparser", "copy",
    "copyreg", "dis", "doctest", "filecmp", "fileinput", "fnmatch", "ftplib", "getopt", "gettext",
    "graphlib", "hmac", "http.client", "http.cookiejar", "http.cookies", "imaplib", "locale", "mailbox",
    "mimetypes", "netrc", "numbers", "optparse", "pdb", "pkgutil", "plistlib", "poplib", "profile",
    "pstats", "py_compile", "pydoc", "quopri", "reprlib", "runpy", "sched", "secrets", "selectors",
    "shelve", "smtplib", "socketserver", "subprocess", "tabnanny", "tempfile", "timeit", "tokenize",
    "tomllib", "trace", "traceback", "types", "urllib.request", "urllib.robotparser", "wave", "weakref",
    "webbrowser", "xml.dom.minidom", "xml.etree.ElementTree", "zipapp", "zoneinfo",
)
LICENSES = ("Apache-2.0", "Artistic", "BSD", "CC0-1.0", "GPL-3", "LGPL-3", "MPL-2.0")
LICENSE_DIR = Path("/usr/share/common-licenses")
MAX_DOC_CHARS = 4000


def held_out_docstrings() -> list[tuple[str, str, str]]:
    """``(module, qualified member name, docstring)`` of public members defined in the held-out
    modules (classes, functions, and the methods of those classes), in sorted order."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mod_name in HELD_OUT_MODULES:
            mod = importlib.import_module(mod_name)
            for name in sorted(vars(mod)):
                obj = getattr(mod, name)
                if name.startswith("_") or getattr(obj, "__module__", None) != mod_name:
                    continue
                if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                    continue
                doc = inspect.getdoc(obj)
                if doc:
                    out.append((mod_name, name, doc))
                if inspect.isclass(obj):
                    for meth in sorted(vars(obj)):
                        f = vars(obj)[meth]
                        if meth.startswith("_") or not inspect.isfunction(f) or not f.__doc__:
                            continue
                        out.append((mod_name, f"{name}.{meth}", inspect.cleandoc(f.__doc__)))
    return out


def _clip(text: str, limit: int = MAX_DOC_CHARS) -> str:
    if len(text) <= limit:
        return text
    cut = text.rfind("\n\n", 0, limit)
    return text[:cut if cut > 0 else limit].rstrip()


def sentences(text: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        out.extend(s for s in re.split(r"(?<=[.!?;])\s+(?=[A-Z(\"'])", para) if s)
    return out


def first_sentence(doc: str) -> str:
    para = " ".join(doc.split("\n\n")[0].split())
    return re.split(r"(?<=[.!?])\s", para)[0]


def _write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _mc_row(rnd: random.Random, query: str, answer: str, pool: list[str], n_choices: int = 4) -> dict:
    distractors = []
    while len(distractors) < n_choices - 1:
        d = rnd.choice(pool)
        if d != answer and d not in distractors:
            distractors.append(d)
    gold = rnd.randrange(n_choices)
    choices = distractors[:gold] + [answer] + distractors[gold:]
    return {"query": query, "choices": choices, "gold": gold}


def build(out: Path) -> dict[str, int]:
    rnd = random.Random(SEED)
    docs = held_out_docstrings()
    counts: dict[str, int] = {}

    # Corpora.
    seen, corpus = set(), []
    for _, _, doc in docs:
        text = _clip(doc)
        if len(text) >= 200 and text not in seen:
            seen.add(text)
            corpus.append(text)
    rnd.shuffle(corpus)
    corpus = corpus[:300]
    _write_jsonl(out / "corpora" / "stdlib_docs.jsonl", ({"text": t} for t in corpus))
    counts["corpora/stdlib_docs"] = len(corpus)
    licenses = [(LICENSE_DIR / name).read_text(encoding="utf-8") for name in LICENSES]
    _write_jsonl(out / "corpora" / "licenses.jsonl", ({"text": t} for t in licenses))
    counts["corpora/licenses"] = len(licenses)

    # stdlib_mc: docstring first sentence -> function name.
    items, seen_q = [], set()
    for mod, name, doc in docs:
        short = name.split(".")[-1]
        s = first_sentence(doc)
        if not 30 <= len(s) <= 200 or s in seen_q or short.lower() in s.lower():
            continue
        seen_q.add(s)
        items.append((s, short))
    rnd.shuffle(items)
    names = sorted({n for _, n in items})
    rows = [_mc_row(rnd, f"{s}\nName:", n, names) for s, n in items[:264]]
    _write_jsonl(out / "tasks" / "stdlib_mc.test.jsonl", rows[:200])
    _write_jsonl(out / "tasks" / "stdlib_mc.train.jsonl", rows[200:])
    counts["tasks/stdlib_mc"] = len(rows)

    # licenses_next: a license sentence -> the sentence after it.
    pairs, all_sents = [], []
    for text in licenses:
        sents = sentences(text)
        all_sents.extend(s for s in sents if 20 <= len(s) <= 300)
        pairs.extend((a, b) for a, b in zip(sents, sents[1:]) if 40 <= len(a) <= 300 and 20 <= len(b) <= 300)
    rnd.shuffle(pairs)
    rows = [_mc_row(rnd, a, b, all_sents) for a, b in pairs[:190]]
    _write_jsonl(out / "tasks" / "licenses_next.test.jsonl", rows[:150])
    _write_jsonl(out / "tasks" / "licenses_next.train.jsonl", rows[150:])
    counts["tasks/licenses_next"] = len(rows)

    # stdlib_cloze: the last word of a docstring sentence.
    cloze, seen_c = [], set()
    for _, _, doc in docs:
        for s in sentences(doc):
            words = s.split()
            m = re.fullmatch(r"([A-Za-z]{4,})[.!?]?", words[-1]) if len(words) >= 6 else None
            if not m or len(s) > 160 or s in seen_c:
                continue
            seen_c.add(s)
            cloze.append({"query": " ".join(words[:-1]) + " ___\nMissing word:", "answer": m.group(1)})
    rnd.shuffle(cloze)
    _write_jsonl(out / "tasks" / "stdlib_cloze.test.jsonl", cloze[:100])
    _write_jsonl(out / "tasks" / "stdlib_cloze.train.jsonl", cloze[100:140])
    counts["tasks/stdlib_cloze"] = min(len(cloze), 140)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data", help="output directory (default: data)")
    args = parser.parse_args(argv)
    for k, v in build(Path(args.out)).items():
        print(f"{k}: {v} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
