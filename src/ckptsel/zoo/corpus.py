"""The micro zoo's text: three English domains found on every build machine, split by document.

    python -m ckptsel.zoo.corpus [--out data/zoo]

Domains (sources fixed in this file, read in sorted order; nothing is imported or executed):

- ``python``: docstrings of :data:`PYTHON_MODULES`, pure-Python standard-library modules, read
  from their source with ``ast`` (module, then public classes, functions and methods in source
  order; one source text per module). None of ``build_data.HELD_OUT_MODULES`` is among them,
  so the ``data/corpora`` and ``data/tasks`` stdlib texts stay unseen by the zoo's models.
- ``licenses``: the license texts of :data:`LICENSES` in Debian's ``/usr/share/common-licenses``.
- ``copyright``: ``/usr/share/doc/<pkg>/copyright`` of :data:`COPYRIGHT_PACKAGES`, the Debian 12
  packages of priority ``required`` (every Debian system has them; packages installed later do
  not change the corpus).

Processing: a file is cut into paragraphs at blank lines (in copyright files a line holding
only ``.`` is a blank line, as in the DEP-5 format); each paragraph's whitespace is collapsed to
single spaces; paragraphs under :data:`MIN_PARAGRAPH_CHARS` characters are dropped; a paragraph
seen before in any domain (domains in :data:`DOMAINS` order) is dropped, so no text is in two
documents. A document is a run of consecutive paragraphs of one source, closed once it reaches
:data:`DOC_CHARS` characters (paragraphs joined by a blank line). Per domain the documents
are shuffled with ``random.Random(f"{SEED}/{domain}")`` and the first :data:`HELDOUT_FRACTION`
of them are held out. Written files, one ``{"text"}`` row per document:

- ``<domain>.pretrain.jsonl``: what the zoo's models are trained on;
- ``<domain>.heldout.jsonl``: never trained on; ``ckptsel.zoo.tasks`` builds the fine-tuning
  tasks and the indicator data from it;
- ``sources.json``: the SHA-256 of every source file read, ``{domain: {source: sha256}}``.

Same Python minor version (3.11) and Debian release (12): byte-identical files. The committed
``data/zoo`` is the source of truth; ``sources.json`` lets a check tell a source that is absent
or changed on this machine (another image or release) from a change in this code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from pathlib import Path

from ckptsel.errors import CkptselError

SEED = 20241104
DOMAINS: tuple[str, ...] = ("python", "licenses", "copyright")
SPLITS = ("pretrain", "heldout")
HELDOUT_FRACTION = 0.3
DOC_CHARS = 1200
MIN_PARAGRAPH_CHARS = 20

PYTHON_MODULES = (
    "_pyio", "argparse", "asyncio.base_events", "asyncio.events", "asyncio.streams", "asyncio.tasks",
    "base64", "bisect", "bz2", "calendar", "collections", "concurrent.futures._base", "contextlib",
    "dataclasses", "datetime", "difflib", "email._policybase", "email.message", "email.parser",
    "email.policy", "email.utils", "enum", "fractions", "functools", "getpass", "glob", "gzip", "heapq",
    "http.server", "importlib.abc", "importlib.metadata", "inspect", "ipaddress", "json", "json.decoder",
    "json.encoder", "linecache", "logging", "logging.config", "logging.handlers", "lzma", "operator",
    "pathlib", "pickle", "pickletools", "platform", "pprint", "pyclbr", "queue", "random",
    "rlcompleter", "shutil", "socket", "ssl", "statistics", "string", "symtable", "sysconfig",
    "tarfile", "textwrap", "threading", "tracemalloc", "typing", "unittest.case", "unittest.loader",
    "unittest.mock", "unittest.result", "urllib.parse", "uuid", "warnings", "wsgiref.handlers",
    "xml.sax.handler", "xml.sax.saxutils", "xmlrpc.client", "xmlrpc.server", "zipfile",
)
LICENSE_DIR = Path("/usr/share/common-licenses")
LICENSES = ("Apache-2.0", "Artistic", "BSD", "CC0-1.0", "GFDL-1.2", "GFDL-1.3", "GPL-1", "GPL-2", "GPL-3",
            "LGPL-2", "LGPL-2.1", "LGPL-3", "MPL-1.1", "MPL-2.0")
DOC_DIR = Path("/usr/share/doc")
COPYRIGHT_PACKAGES = (
    "apt", "base-files", "base-passwd", "bash", "bsdutils", "coreutils", "dash", "debconf",
    "debianutils", "diffutils", "dpkg", "e2fsprogs", "findutils", "grep", "gzip", "hostname",
    "init-system-helpers", "libc-bin", "liblocale-gettext-perl", "libpam-modules", "libpam-modules-bin",
    "libpam-runtime", "libtext-iconv-perl", "login", "mawk", "mount", "ncurses-base", "ncurses-bin",
    "passwd", "perl-base", "sed", "sensible-utils", "sysvinit-utils", "tar", "tzdata", "util-linux",
)


def data_dir() -> Path:
    """The repository's ``data/zoo`` (resolved from this file)."""
    path = Path(__file__).resolve().parents[3] / "data" / "zoo"
    if not path.is_dir():
        raise CkptselError(f"zoo data directory {path} is missing; build it with `python -m "
                           f"ckptsel.zoo.corpus --out {path}` and `python -m ckptsel.zoo.tasks --out {path}`")
    return path


def load_domain(domain: str, split: str = "pretrain", *, root: str | Path | None = None) -> list[str]:
    """The documents of one domain and split (``pretrain`` or ``heldout``), in file order."""
    if domain not in DOMAINS:
        raise CkptselError(f"unknown zoo domain {domain!r}; choose one of {', '.join(DOMAINS)}")
    if split not in SPLITS:
        raise CkptselError(f"unknown zoo split {split!r}; choose pretrain or heldout")
    path = (Path(root) if root is not None else data_dir()) / f"{domain}.{split}.jsonl"
    if not path.is_file():
        raise CkptselError(f"{path} is missing; rebuild it with `python -m ckptsel.zoo.corpus --out {path.parent}`")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


# -- sources ----------------------------------------------------------------------------------
SOURCES_FILE = "sources.json"


def source_files(domain: str) -> list[tuple[str, Path]]:
    """``(source name, file)`` of a domain, in the fixed order of its list (files may be absent)."""
    if domain == "python":
        import importlib.util

        out = []
        for mod in PYTHON_MODULES:
            spec = importlib.util.find_spec(mod)
            if spec is None or not str(spec.origin).endswith(".py"):
                raise CkptselError(f"standard-library module {mod} has no Python source here; "
                                   f"the zoo corpus needs CPython 3.11's standard library")
            out.append((mod, Path(spec.origin)))
        return out
    if domain == "licenses":
        return [(name, LICENSE_DIR / name) for name in LICENSES]
    if domain == "copyright":
        return [(pkg, DOC_DIR / pkg / "copyright") for pkg in COPYRIGHT_PACKAGES]
    raise CkptselError(f"unknown zoo domain {domain!r}; choose one of {', '.join(DOMAINS)}")


def _read(domain: str, name: str, path: Path) -> str:
    if not path.is_file():
        fix = f"install it (apt-get install {name})" if domain == "copyright" else "run on Debian 12 with Python 3.11"
        raise CkptselError(f"zoo source {path} ({domain} domain) is missing; {fix} to rebuild, or keep the "
                           f"committed data/zoo (the source of truth)")
    return path.read_text(encoding="utf-8")


def source_texts(domain: str) -> list[tuple[str, str]]:
    """``(source name, raw text)`` of a domain, in the fixed order of its list."""
    files = source_files(domain)
    if domain == "python":
        from ckptsel.tiny import _docstrings

        return [(mod, "\n\n".join(_docstrings(mod))) for mod, _ in files]
    texts = [(name, _read(domain, name, path)) for name, path in files]
    if domain == "copyright":
        return [(pkg, re.sub(r"(?m)^[ \t]*\.[ \t]*$", "", text)) for pkg, text in texts]
    return texts


def sources_manifest() -> dict[str, dict[str, str]]:
    """``{domain: {source name: SHA-256 of its file}}``, what ``sources.json`` records."""
    return {d: {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in source_files(d)}
            for d in DOMAINS}


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, whitespace collapsed to single spaces, empty ones dropped."""
    return [p for p in (" ".join(block.split()) for block in re.split(r"\n[ \t]*\n", text)) if p]


def documents(domain: str, seen: set[str]) -> list[str]:
    """The domain's documents (see the module docstring); adds their paragraphs to ``seen``."""
    docs = []
    for _, text in source_texts(domain):
        current: list[str] = []
        for para in paragraphs(text):
            if len(para) < MIN_PARAGRAPH_CHARS or para in seen:
                continue
            seen.add(para)
            current.append(para)
            if sum(len(p) + 2 for p in current) >= DOC_CHARS:
                docs.append("\n\n".join(current))
                current = []
        if current:
            docs.append("\n\n".join(current))
    return docs


def split_domain(domain: str, seen: set[str]) -> dict[str, list[str]]:
    """``{"pretrain": [...], "heldout": [...]}`` of one domain, given the paragraphs ``seen`` in
    the domains before it (added to)."""
    docs = documents(domain, seen)
    random.Random(f"{SEED}/{domain}").shuffle(docs)
    n_held = round(len(docs) * HELDOUT_FRACTION)
    return {"heldout": docs[:n_held], "pretrain": docs[n_held:]}


def build_splits() -> dict[str, dict[str, list[str]]]:
    """``{domain: {"pretrain": [...], "heldout": [...]}}``."""
    seen: set[str] = set()
    return {domain: split_domain(domain, seen) for domain in DOMAINS}


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def build(out: str | Path) -> dict[str, dict[str, tuple[int, int]]]:
    """Write ``<domain>.<split>.jsonl`` and ``sources.json`` under ``out``; returns
    ``{domain: {split: (documents, chars)}}``."""
    out = Path(out)
    counts: dict[str, dict[str, tuple[int, int]]] = {}
    splits_by_domain = build_splits()
    out.mkdir(parents=True, exist_ok=True)
    (out / SOURCES_FILE).write_text(json.dumps(sources_manifest(), indent=1) + "\n", encoding="utf-8")
    for domain, splits in splits_by_domain.items():
        counts[domain] = {}
        for split in SPLITS:
            docs = splits[split]
            write_jsonl(out / f"{domain}.{split}.jsonl", ({"text": t} for t in docs))
            counts[domain][split] = (len(docs), sum(len(t) for t in docs))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/zoo", help="output directory (default: data/zoo)")
    args = parser.parse_args(argv)
    for domain, splits in build(args.out).items():
        for split, (n, chars) in splits.items():
            print(f"{domain}.{split}: {n} documents, {chars} characters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
