"""The micro zoo's committed corpus and tasks: reproducible, disjoint where they must be, loadable."""

from __future__ import annotations

import json
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


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zoo")
    corpus.build(out)
    tasks.build(out)
    return out


def test_rebuild_is_byte_identical(rebuilt):
    names = generated_files(ZOO)
    assert names == generated_files(rebuilt)
    assert len(names) == 2 * len(corpus.DOMAINS) + 6 + 3 + 6  # corpus, SFT splits, ppl corpora, k-shot
    for name in names:
        assert (rebuilt / name).read_bytes() == (ZOO / name).read_bytes(), name


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
