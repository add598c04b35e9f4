"""The micro zoo's committed corpus and tasks: reproducible, disjoint where they must be, loadable."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import pytest

from ckptsel.errors import CkptselError
from ckptsel.zoo import corpus, tasks

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "data" / "zoo"
SFT_CONFIGS = sorted((ROOT / "configs" / "sft").glob("zoo_*.yaml"))


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def generated_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "README.md")


def row_text(row: dict) -> str:
    """The corpus sentence a task row was made from (see ckptsel.zoo.tasks)."""
    if "completion" in row:  # cloze
        masked = row["prompt"].removesuffix("\nMissing word:")
        return masked.replace("___", row["completion"].strip(), 1)
    if row["query"].startswith("Passage: "):  # domain classification
        return row["query"].removeprefix("Passage: ").removesuffix("\nSource:")
    return f"{row['query']} {row['choices'][row['gold']]}"  # sentence ending


def source_change(domain: str, manifest: dict) -> tuple[str, str] | None:
    """``("absent" | "changed", path)`` of the domain's first source that is not on this machine
    with the bytes ``sources.json`` records; None when all are."""
    for name, path in corpus.source_files(domain):
        if not path.is_file():
            return "absent", str(path)
        if hashlib.sha256(path.read_bytes()).hexdigest() != manifest[domain][name]:
            return "changed", str(path)
    return None


def rebuild_and_compare(out: Path, zoo: Path = ZOO) -> list[str]:
    """Rebuild what this machine can into ``out`` and compare it byte for byte with ``zoo``;
    returns a note per corpus domain not checked. The committed files are the truth:

    - a domain whose sources are all present is rebuilt (later domains drop the paragraphs of
      the committed earlier ones, as corpus.build does) and must match, unless one of its
      sources differs from sources.json (another Debian or Python release): then a mismatch is
      a note, not a failure, since the code cannot be blamed for new input;
    - a domain with an absent source is skipped with a note;
    - the task and indicator files are always rebuilt, from the committed corpus files.
    """
    manifest = json.loads((zoo / corpus.SOURCES_FILE).read_text())
    assert {d: sorted(m) for d, m in manifest.items()} == {
        d: sorted(name for name, _ in corpus.source_files(d)) for d in corpus.DOMAINS}  # every source recorded
    notes, seen = [], set()
    for domain in corpus.DOMAINS:
        change = source_change(domain, manifest)
        if change is not None and change[0] == "absent":
            notes.append(f"{domain} skipped ({change[1]} is absent)")
        else:
            splits = corpus.split_domain(domain, set(seen))
            for split in corpus.SPLITS:
                name = f"{domain}.{split}.jsonl"
                corpus.write_jsonl(out / name, ({"text": t} for t in splits[split]))
                same = (out / name).read_bytes() == (zoo / name).read_bytes()
                if change is None:
                    assert same, f"{name} rebuilt from unchanged sources differs from data/zoo"
                elif not same:
                    notes.append(f"{domain} differs as {change[1]} changed")
                    break
        seen |= {p for split in corpus.SPLITS for doc in corpus.load_domain(domain, split, root=zoo)
                 for p in doc.split("\n\n")}
    tasks_out = out / "tasks"
    written = tasks.build(tasks_out, corpus_dir=zoo)
    task_names = generated_files(tasks_out)
    assert set(written) <= set(task_names) and task_names == [n for n in generated_files(zoo) if "/" in n]
    for name in task_names:
        assert (tasks_out / name).read_bytes() == (zoo / name).read_bytes(), name
    return notes


def test_rebuild_is_byte_identical(tmp_path):
    names = generated_files(ZOO)
    # corpus splits, sources.json, SFT splits, ppl corpora, k-shot files
    assert len(names) == 2 * len(corpus.DOMAINS) + 1 + 6 + 3 + 6
    notes = rebuild_and_compare(tmp_path)
    if notes:  # one line: what this machine could not check, and why
        warnings.warn("zoo rebuild check: " + "; ".join(notes) + "; the committed data/zoo stands")


def test_rebuild_check_on_a_machine_missing_copyright_files(tmp_path, monkeypatch):
    """A fresh machine of another image: only some packages' copyright files. The check
    rebuilds python, licenses and the tasks, and names the one domain it skipped."""
    doc = tmp_path / "doc"
    kept = [p for p in corpus.COPYRIGHT_PACKAGES[:5] if (corpus.DOC_DIR / p / "copyright").is_file()]
    for pkg in kept:
        (doc / pkg).mkdir(parents=True)
        shutil.copy(corpus.DOC_DIR / pkg / "copyright", doc / pkg / "copyright")
    monkeypatch.setattr(corpus, "DOC_DIR", doc)
    absent = next(p for p in corpus.COPYRIGHT_PACKAGES if p not in kept)
    missing = doc / absent / "copyright"
    assert rebuild_and_compare(tmp_path / "out") == [f"copyright skipped ({missing} is absent)"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.jsonl")) == [
        "licenses.heldout.jsonl", "licenses.pretrain.jsonl", "python.heldout.jsonl", "python.pretrain.jsonl"]
    with pytest.raises(CkptselError, match=rf"zoo source {missing} \(copyright domain\) is missing; install it "
                                           rf"\(apt-get install {absent}\)") as e:
        corpus.build(tmp_path / "build")
    assert "\n" not in str(e.value)


def test_changed_source_is_a_note_not_a_failure(tmp_path, monkeypatch):
    """A license text edited on this machine: the licenses domain no longer matches, which is
    reported; python and the tasks are still checked."""
    lic = tmp_path / "licenses"
    shutil.copytree(corpus.LICENSE_DIR, lic)
    (lic / "BSD").write_text((lic / "BSD").read_text() + "\n\nA paragraph this machine added to the BSD text.\n")
    monkeypatch.setattr(corpus, "LICENSE_DIR", lic)
    notes = rebuild_and_compare(tmp_path / "out")
    assert notes[0] == f"licenses differs as {lic / 'BSD'} changed"
    assert all(n.startswith("copyright") for n in notes[1:])  # absent on some machines, identical on others


def test_three_domains_split_by_document():
    assert len(corpus.DOMAINS) >= 3
    pretrain_paragraphs = set()
    for domain in corpus.DOMAINS:
        pre, held = corpus.load_domain(domain, "pretrain"), corpus.load_domain(domain, "heldout")
        assert len(pre) > 2 * len(held) > 0
        assert 100_000 < sum(map(len, pre)) < 400_000
        pretrain_paragraphs |= {p for doc in pre for p in doc.split("\n\n")}
    for domain in corpus.DOMAINS:
        for doc in corpus.load_domain(domain, "heldout"):
            assert not set(doc.split("\n\n")) & pretrain_paragraphs
    size = sum(p.stat().st_size for p in ZOO.rglob("*") if p.is_file())
    assert size < 3_000_000


def test_sft_eval_rows_unseen_in_pretraining_and_in_kshot_tasks():
    pretrain = "\n\n".join(doc for d in corpus.DOMAINS for doc in corpus.load_domain(d, "pretrain"))
    kshot = [row_text(r) for p in sorted((ZOO / "indicators").glob("zoo_kshot_*.jsonl")) for r in rows(p)]
    indicator_text = "\n\n".join(r["text"] for d in corpus.DOMAINS for r in rows(ZOO / "indicators" / f"{d}.jsonl"))
    sft_train = {row_text(r) for p in (ZOO / "sft").glob("*.train.jsonl") for r in rows(p)}
    for path in sorted((ZOO / "sft").glob("*.eval.jsonl")):
        evals = [row_text(r) for r in rows(path)]
        assert 100 <= len(evals) <= 200
        for text in evals:
            assert text not in pretrain, (path.name, text)
            assert text not in indicator_text, (path.name, text)
            assert text not in sft_train, (path.name, text)
            assert all(text != k and text not in k and k not in text for k in kshot), (path.name, text)


def test_domain_task_is_balanced_and_labels_match_sources():
    held = {d: "\n\n".join(corpus.load_domain(d, "heldout")) for d in corpus.DOMAINS}
    for split in ("train", "eval"):
        data = rows(ZOO / "sft" / f"zoo_domain.{split}.jsonl")
        golds = [r["gold"] for r in data]
        assert {golds.count(g) for g in range(3)} == {len(data) // 3}
        for r in data:
            assert r["choices"] == list(tasks.DOMAIN_LABELS)
            assert row_text(r) in held[corpus.DOMAINS[r["gold"]]]


def test_configs_load():
    from ckptsel.finetune import load_task
    from ckptsel.indicators.spec import load_spec

    assert {p.stem for p in SFT_CONFIGS} >= {"zoo_domain", "zoo_ending", "zoo_cloze"}
    kinds = {load_task(p).type for p in SFT_CONFIGS}
    assert kinds == {"multiple_choice", "prompt_completion"}
    spec = load_spec(ROOT / "configs" / "indicators" / "zoo.yaml")
    assert len(spec.corpora) == len(corpus.DOMAINS) and len(spec.tasks) == 2


def test_bad_domain_or_split_is_a_clear_error():
    with pytest.raises(CkptselError, match="unknown zoo domain 'poetry'"):
        corpus.load_domain("poetry")
    with pytest.raises(CkptselError, match="unknown zoo split 'test'"):
        corpus.load_domain("python", "test")
    assert corpus.data_dir() == ZOO
