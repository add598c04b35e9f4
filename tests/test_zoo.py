"""The micro zoo's pretraining: objectives' loss masks by hand, determinism, falling loss, rerun skip,
store rows and the `ckptsel zoo build` CLI, on a preset of tiny variants (hidden 32, 32 tokens)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from ckptsel.cli import main  # noqa: E402
from ckptsel.store import Store  # noqa: E402
from ckptsel.zoo.corpus import DOMAINS, load_domain  # noqa: E402
from ckptsel.zoo.presets import Preset, get_preset, mix_weights  # noqa: E402
from ckptsel.zoo.pretrain import (IGNORE, Variant, build_zoo, clm_example, prefix_attention_mask,  # noqa: E402
                                  prefix_lm_example, pretrain_variant, span_example)

TINY = dict(hidden_size=32, num_layers=2, num_heads=4, seq_len=32, batch_size=8, warmup_steps=2)
STEPS = (5, 40)


def tiny_preset() -> Preset:
    return Preset("tiny", "two tiny variants", (
        Variant("a", {"clm": 1}, 1e-2, mix_weights("uniform"), seed=0, save_steps=STEPS, **TINY),
        Variant("b", {"prefix_lm": 1, "span": 1}, 1e-2, {"python": 3, "licenses": 1}, seed=1, save_steps=STEPS,
                **TINY),
    ), vocab_size=512)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    ws = tmp_path_factory.mktemp("zoo-ws")
    result = build_zoo(tiny_preset(), ws, progress=False)
    return ws, result


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_clm_and_prefix_lm_label_masks_by_hand():
    assert clm_example([1, 50, 51, 52]) == ([1, 50, 51, 52], [IGNORE, 50, 51, 52])
    assert prefix_lm_example([1, 50, 51, 52, 53], 2) == ([1, 50, 51, 52, 53], [IGNORE, IGNORE, 51, 52, 53])
    with pytest.raises(ValueError):
        prefix_lm_example([1, 50, 51], 3)  # no target left


def test_prefix_attention_mask_by_hand():
    # prefix of 2 in 4 positions: rows 0 and 1 see {0, 1}; row 2 sees {0, 1, 2}; row 3 sees all.
    allowed = [[1, 1, 0, 0],
               [1, 1, 0, 0],
               [1, 1, 1, 0],
               [1, 1, 1, 1]]
    mask = prefix_attention_mask([2], 4)
    assert mask.shape == (1, 1, 4, 4)
    assert (mask[0, 0] == 0).int().tolist() == allowed
    assert (mask[0, 0] == torch.finfo(torch.float32).min).int().tolist() == [[1 - a for a in r] for r in allowed]
    # prefix 1 (only BOS) is plain causal attention
    assert (prefix_attention_mask([1], 3)[0, 0] == 0).int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]


def test_transformers_uses_the_bidirectional_prefix(zoo):
    """Under the prefix mask, position 0 sees position 2 (inside a prefix of 3); causally it does not."""
    from transformers import LlamaForCausalLM

    ws, _ = zoo
    model = LlamaForCausalLM.from_pretrained(ws / "zoo" / "tiny" / "a" / f"checkpoint-{STEPS[-1]}").eval()
    x, y = torch.tensor([[1, 40, 41, 42, 43]]), torch.tensor([[1, 40, 99, 42, 43]])
    mask = prefix_attention_mask([3], 5)
    with torch.no_grad():
        causal = [model(input_ids=t).logits[0, 0] for t in (x, y)]
        prefix = [model(input_ids=t, attention_mask=mask).logits[0, 0] for t in (x, y)]
        last = [model(input_ids=t, attention_mask=mask).logits[0, 4] for t in (x, y)]
    assert torch.equal(causal[0], causal[1])
    assert not torch.allclose(prefix[0], prefix[1])
    assert not torch.allclose(last[0], last[1])


def test_span_example_is_the_indicator_format(zoo):
    """[BOS] + enc(context + "\\n") + enc(target), loss on the target only; sentinels are one token."""
    from transformers import PreTrainedTokenizerFast

    ws, _ = zoo
    tok = PreTrainedTokenizerFast.from_pretrained(ws / "zoo" / "tiny" / "tokenizer")
    assert len(tok.encode("<extra_id_0>", add_special_tokens=False)) == 1
    assert len(tok.encode("<extra_id_31>", add_special_tokens=False)) == 1
    context, target = "Return the <extra_id_0> of x.", "<extra_id_0> absolute value"
    ids, labels = span_example(tok, context, target, 40)
    n_real = sum(i != tok.pad_token_id for i in ids)
    assert len(ids) == len(labels) == 40
    assert ids[0] == tok.bos_token_id
    scored = [i for i, lab in zip(ids, labels) if lab != IGNORE]
    assert tok.decode(scored) == target
    assert [lab for lab in labels if lab != IGNORE] == scored
    unscored = [i for i, lab in zip(ids[:n_real], labels) if lab == IGNORE]
    assert tok.decode(unscored) == "<s>" + context + "\n"
    assert all(lab == IGNORE for lab in labels[n_real:])
    # too long: the context loses tokens from the left (BOS first), the target stays whole
    n_tgt = len(scored)
    short_ids, short_labels = span_example(tok, context, target, n_tgt + 3)
    assert short_ids == unscored[-3:] + scored
    assert short_labels == [IGNORE] * 3 + scored


def test_store_rows_and_metadata(zoo):
    ws, result = zoo
    assert result.trained == ["a", "b"] and result.skipped == []
    assert sorted(result.checkpoint_ids) == ["a@40", "a@5", "b@40", "b@5"]
    with Store(ws / "ckptsel.db") as store:
        ckpts = {c.id: c for c in store.checkpoints()}
        frame = store.feature_frame()
    assert {(c.run, c.step) for c in ckpts.values()} == {("a", 5), ("a", 40), ("b", 5), ("b", 40)}
    assert ckpts["a@40"].path == str(ws / "zoo" / "tiny" / "a" / "checkpoint-40")
    row = {cid: frame.as_dict(i) for i, cid in enumerate(frame.ids)}
    assert row["a@5"]["zoo/objective"] == "clm"
    assert row["b@5"]["zoo/objective"] == "prefix_lm:0.5+span:0.5"
    assert row["a@40"]["zoo/lr"] == pytest.approx(1e-2)
    assert [row["a@5"][f"zoo/mix/{d}"] for d in DOMAINS] == pytest.approx([1 / 3] * 3)
    # {python: 3, licenses: 1} normalised
    assert {d: row["b@5"][f"zoo/mix/{d}"] for d in DOMAINS} == pytest.approx(
        {"python": 0.75, "licenses": 0.25, "copyright": 0.0})
    # clm rows are full windows: tokens = steps x batch x seq_len
    assert row["a@5"]["zoo/tokens"] == 5 * 8 * 32 and row["a@40"]["zoo/tokens"] == 40 * 8 * 32
    assert 0 < row["b@5"]["zoo/tokens"] <= 5 * 8 * 32 < row["b@40"]["zoo/tokens"]


def heldout_loss(ckpt: Path, tok, seq_len: int = 32, rows: int = 24) -> float:
    """Mean next-token cross-entropy on held-out windows [BOS] + 31 tokens of every domain."""
    import torch.nn.functional as F
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(ckpt).eval()
    windows = []
    for d in DOMAINS:
        ids = [t for doc in load_domain(d, "heldout")[:5] for t in tok.encode(doc) + [tok.eos_token_id]]
        windows += [[tok.bos_token_id] + ids[i:i + seq_len - 1] for i in range(0, rows * (seq_len - 1), seq_len - 1)]
    x = torch.tensor(windows)
    with torch.no_grad():
        logits = model(input_ids=x).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)).item()


def test_loss_falls_on_heldout_text(zoo):
    from transformers import PreTrainedTokenizerFast

    ws, _ = zoo
    root = ws / "zoo" / "tiny"
    tok = PreTrainedTokenizerFast.from_pretrained(root / "tokenizer")
    for name in ("a", "b"):
        early, late = (heldout_loss(root / name / f"checkpoint-{s}", tok) for s in STEPS)
        assert late < early - 0.3, (name, early, late)


def test_same_seed_same_bytes(zoo, tmp_path):
    ws, _ = zoo
    root = ws / "zoo" / "tiny"
    variant = tiny_preset().variants[1]  # prefix LM + span: every sampler path
    again = pretrain_variant(variant, tmp_path / "b", root / "tokenizer")
    for ckpt in again:
        assert sha(ckpt / "model.safetensors") == sha(root / "b" / ckpt.name / "model.safetensors")
    other = pretrain_variant(Variant(**{**variant.to_dict(), "seed": 7, "save_steps": (5,)}), tmp_path / "b7",
                             root / "tokenizer")
    assert sha(other[0] / "model.safetensors") != sha(root / "b" / "checkpoint-5" / "model.safetensors")


def test_rerun_skips_and_interrupted_variant_is_retrained(zoo):
    ws, first = zoo
    root = ws / "zoo" / "tiny"
    mtimes = {p: p.stat().st_mtime_ns for p in root.glob("*/checkpoint-*/model.safetensors")}
    started = time.perf_counter()
    again = build_zoo(tiny_preset(), ws, progress=False)
    assert again.trained == [] and again.skipped == ["a", "b"]
    assert time.perf_counter() - started < 10
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert sorted(again.checkpoint_ids) == sorted(first.checkpoint_ids)

    (root / "b" / "complete.json").unlink()  # as if killed before the end
    third = build_zoo(tiny_preset(), ws, progress=False)
    assert third.trained == ["b"] and third.skipped == ["a"]
    with Store(ws / "ckptsel.db") as store:
        assert len(store.checkpoints()) == 4


def test_cli_zoo_build_on_a_yaml_preset(tmp_path, capsys):
    preset = tmp_path / "one.yaml"
    preset.write_text(
        "name: one\nvocab_size: 400\n"
        "defaults: {hidden_size: 16, seq_len: 16, batch_size: 2, warmup_steps: 1}\n"
        "variants:\n"
        "  - {name: solo, objectives: span, lr: 0.003, mix: licenses-heavy, seed: 3, save_steps: [2, 3]}\n")
    assert get_preset(preset).variants[0].mix == pytest.approx({"python": 0.2, "licenses": 0.6, "copyright": 0.2})
    ws = tmp_path / "ws"
    assert main(["zoo", "build", "--preset", str(preset), "--workspace", str(ws), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["preset"] == "one" and sorted(out["checkpoint_ids"]) == ["solo@2", "solo@3"]
    state = json.loads((ws / "zoo" / "one" / "solo" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    config = json.loads((ws / "zoo" / "one" / "solo" / "checkpoint-3" / "config.json").read_text())
    assert (config["hidden_size"], config["max_position_embeddings"], config["vocab_size"]) == (16, 16, 400)

    assert main(["zoo", "list", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)["presets"]}
    assert listed["micro"]["variants"] >= 4 and listed["micro"]["checkpoints"] >= 12
    assert listed["paper-mini"]["variants"] >= 24

    bad = tmp_path / "bad.yaml"
    bad.write_text("variants:\n  - {name: x, lr: 0.01, save_steps: [1], mix: {nowhere: 1}}\n")
    assert main(["zoo", "build", "--preset", str(bad), "--workspace", str(ws)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown domain 'nowhere'" in err
