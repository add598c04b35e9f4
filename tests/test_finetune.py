"""Fine-tuning outcomes: loss masking, seeded adapters, spec-keyed labels, resumption, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ckptsel import finetune as ft
from ckptsel.checkpoints import add_checkpoints, load_model
from ckptsel.errors import CkptselError
from ckptsel.store import Store
from ckptsel.tiny import build_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
TASK_YAML = REPO / "configs" / "sft" / "tiny_mc.yaml"


def write_task(tmp_path: Path, name: str = "tiny_mc", **overrides) -> Path:
    """A copy of configs/sft/tiny_mc.yaml with absolute data paths and some settings changed."""
    data = yaml.safe_load(TASK_YAML.read_text())
    data["train"] = str((TASK_YAML.parent / data["train"]).resolve())
    data["eval"] = str((TASK_YAML.parent / data["eval"]).resolve())
    data.update(name=name, **overrides)
    path = tmp_path / f"{name}-{abs(hash(json.dumps(overrides, sort_keys=True))) % 10**8}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny", seed=0)


def label_rows(db: Path, target: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT fingerprint, spec_hash, value, std, n FROM labels WHERE target=? "
                            "ORDER BY rowid", (target,)).fetchall()


def test_completion_only_loss_mask_by_hand(ckpt_dir):
    _, tok = load_model(ckpt_dir, dtype="float32")
    prompt, completion = "Question: is it?\nAnswer:", " yes"
    p = tok(prompt)["input_ids"]
    c = tok(completion, add_special_tokens=False)["input_ids"]
    ids, labels = ft.encode_example(tok, prompt, completion, 64)
    assert ids == p + c
    assert labels == [-100] * len(p) + c  # -100 exactly on the prompt tokens
    ids, labels = ft.encode_example(tok, prompt, completion, 64, add_eos=True)
    assert labels == [-100] * len(p) + c + [tok.eos_token_id]
    # too long: the prompt loses tokens from its left, the completion is kept
    ids, labels = ft.encode_example(tok, prompt, completion, len(c) + 2)
    assert ids == p[-2:] + c and labels == [-100, -100] + c
    # batching pads with -100 labels and a zero attention mask
    batch_ids, mask, batch_labels = ft.collate([(p + c, [-100] * len(p) + c), (c, c)], pad_id=0)
    assert mask[1].tolist() == [1] * len(c) + [0] * len(p)
    assert batch_labels[1].tolist() == c + [-100] * len(p)


def _adapter(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_same_seed_same_adapter_other_seed_differs(tmp_path, ckpt_dir):
    task = ft.load_task(write_task(tmp_path, max_steps=3))
    with Store(tmp_path / "ws" / "ckptsel.db") as store:
        (ck,) = add_checkpoints(store, [ckpt_dir])
    for out, seed in (("a", 0), ("b", 0), ("c", 1)):
        ft.finetune_one(ck, task, seed, tmp_path / out, progress=False)
    a, b, c = (_adapter(tmp_path / n) for n in "abc")
    assert set(a) == set(b) == set(c) and any("lora_A" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_training_improves_eval(tmp_path, ckpt_dir):
    """LoRA lowers the completion loss; full fine-tuning learns the always-"yes" answer."""
    task = ft.load_task(write_task(tmp_path))
    pairs = ft.read_pairs(task, task.eval)
    model, tok = load_model(ckpt_dir, dtype="float32")
    before = ft.completion_loss(model, tok, task, pairs)
    acc_before = ft.evaluate(model, tok, task)["acc"]
    model, _ = ft.train(model, tok, task, seed=0, progress=False)
    after = ft.completion_loss(model, tok, task, pairs)
    assert after < before - 0.3

    full = ft.load_task(write_task(tmp_path, method="full", max_steps=30))
    model, tok = load_model(ckpt_dir, dtype="float32")
    model, _ = ft.train(model, tok, full, seed=0, progress=False)
    acc_after = ft.evaluate(model, tok, full)["acc"]
    assert acc_after == 1.0 > acc_before


def test_labels_keyed_by_spec_rerun_and_resume(tmp_path):
    ws = tmp_path / "ws"
    a = build_tiny_checkpoint(tmp_path / "a", seed=1)
    b = build_tiny_checkpoint(tmp_path / "b", seed=2)
    task = ft.load_task(write_task(tmp_path, max_steps=2))
    with Store(ws / "ckptsel.db") as store:
        ca, cb = add_checkpoints(store, [a, b])
        # interrupted: checkpoint b's weights are gone mid-run -> a labelled, b not, no partial label
        moved = tmp_path / "b-away"
        shutil.move(str(b), moved)
        with pytest.raises(CkptselError):
            ft.run_finetune(store, [ca, cb], task, workspace=ws, seeds=[0, 1], progress=False)
        shutil.move(str(moved), b)
        rows = label_rows(ws / "ckptsel.db", task.target)
        assert [r[0] for r in rows] == [ca.fingerprint]
        # resumed: a skipped, b done
        rep = ft.run_finetune(store, [ca, cb], task, workspace=ws, seeds=[0, 1], progress=False)
        assert rep.skipped == [ca.id] and [d["id"] for d in rep.done] == [cb.id]
        # rerun: nothing computed
        rep = ft.run_finetune(store, [ca, cb], task, workspace=ws, seeds=[0, 1], progress=False)
        assert rep.done == [] and rep.skipped == [ca.id, cb.id]
        # another learning rate: a new spec hash, computed again, old labels untouched
        task2 = ft.load_task(write_task(tmp_path, max_steps=2, learning_rate=0.02))
        assert task2.hash != task.hash and task2.target == task.target
        rep = ft.run_finetune(store, [ca], task2, workspace=ws, seeds=[0, 1], progress=False)
        assert [d["id"] for d in rep.done] == [ca.id]
    rows = label_rows(ws / "ckptsel.db", task.target)
    assert len(rows) == 3
    assert {r[1] for r in rows} == {task.label_hash([0, 1]), task2.label_hash([0, 1])}
    # value = mean over seeds, std = sample std, n = 2, from the per-seed results on disk
    for ck, h, t in ((ca, rows[0][1], task), (cb, rows[1][1], task), (ca, rows[2][1], task2)):
        vals = [json.loads((ft.adapter_dir(ws, ck, t, s) / "result.json").read_text())["metrics"]["acc"]
                for s in (0, 1)]
        (row,) = [r for r in rows if r[0] == ck.fingerprint and r[1] == h]
        assert row[2] == pytest.approx(statistics.mean(vals))
        assert row[3] == pytest.approx(statistics.stdev(vals)) and row[4] == 2


def test_cli_finetune_writes_label_visible_in_list(tmp_path, ckpt_dir):
    task = write_task(tmp_path, max_steps=2)
    ws = tmp_path / "ws"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    run = [sys.executable, "-m", "ckptsel", "--workspace", str(ws)]
    out = subprocess.run(run + ["finetune", str(ckpt_dir), "--task", str(task), "--seeds", "0", "--no-progress"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    listing = subprocess.run(run + ["list", "--targets"], capture_output=True, text=True, env=env, timeout=60)
    assert "sft/tiny_mc/acc (1)" in listing.stdout
    bad = subprocess.run(run + ["finetune", str(ckpt_dir), "--task", str(tmp_path / "nope.yaml")],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_eval_loss_matches_transformers_loss(ckpt_dir):
    """eval_loss of one example = transformers' own causal-LM loss with the same -100 labels."""
    task = ft.load_task(TASK_YAML)
    pair = ft.read_pairs(task, task.eval)[:1]
    model, tok = load_model(ckpt_dir, dtype="float32")
    ids, labels = ft.encode_example(tok, *pair[0], task.max_length)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
    assert ft.completion_loss(model, tok, task, pair) == pytest.approx(ref, rel=1e-5)


def test_gradient_checkpointing_same_adapter_same_hash(tmp_path, ckpt_dir):
    """Recomputing activations in backward changes memory, not the numbers: the adapter after 3
    steps equals the one trained without it (to float rounding), and the task hash is the same."""
    plain = ft.load_task(write_task(tmp_path, max_steps=3))
    gc = ft.load_task(write_task(tmp_path, max_steps=3, gradient_checkpointing=True))
    assert gc.gradient_checkpointing and not plain.gradient_checkpointing and gc.hash == plain.hash
    adapters = []
    for task in (plain, gc):
        model, tok = load_model(ckpt_dir, dtype="float32")
        model, _ = ft.train(model, tok, task, seed=0, progress=False)
        adapters.append({k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k})
    assert adapters[0].keys() == adapters[1].keys() and adapters[0]
    for k in adapters[0]:
        torch.testing.assert_close(adapters[0][k], adapters[1][k], rtol=1e-4, atol=1e-6)
    with pytest.raises(CkptselError, match="gradient_checkpointing must be true or false"):
        ft.load_task(write_task(tmp_path, max_steps=3, gradient_checkpointing="yes"))


def test_cli_finetune_of_pickled_weights_needs_allow_pickle(tmp_path, ckpt_dir):
    import shutil

    from safetensors.torch import load_file

    ckpt = tmp_path / "run" / "checkpoint-5"
    shutil.copytree(ckpt_dir, ckpt)
    torch.save(load_file(ckpt / "model.safetensors"), ckpt / "pytorch_model.bin")
    (ckpt / "model.safetensors").unlink()
    task = write_task(tmp_path, max_steps=2)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    run = [sys.executable, "-m", "ckptsel", "--workspace", str(tmp_path / "ws"), "finetune", str(ckpt),
           "--task", str(task), "--no-progress"]
    refused = subprocess.run(run, capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 2 and refused.stderr.strip().endswith("(pass --allow-pickle to trust .bin files)")
    assert len(refused.stderr.strip().splitlines()) == 1
    ok = subprocess.run(run + ["--allow-pickle"], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
