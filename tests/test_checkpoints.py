"""Checkpoints on disk: discovery, validation, fingerprints, registration and safe loading,
on real tiny Llama checkpoints built here (src/ckptsel/tiny.py) and a real SQLite store."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from helpers_tables import check_ok, run_cli  # noqa: E402

from ckptsel.checkpoints import (add_checkpoints, discover, inspect_checkpoint, load_model,  # noqa: E402
                                 weights_fingerprint)
from ckptsel.errors import CkptselError  # noqa: E402
from ckptsel.store import Store  # noqa: E402
from ckptsel.tiny import build_tiny_checkpoint, build_tiny_run, default_text, train_tokenizer  # noqa: E402


def fingerprint_by_hand(files: list[Path]) -> str:
    """The documented definition, written out independently of weights_fingerprint."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda p: p.name):
        data = f.read_bytes()
        h.update(f.name.encode("utf-8") + b"\x00" + len(data).to_bytes(8, "little") + data)
    return "sha256:" + h.hexdigest()[:32]


def logits(model) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([[5, 17, 300, 42, 7, 511]])).logits.float()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """One tiny checkpoint whose tokenizer the others reuse (trained once per module)."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("base") / "base", seed=0)


@pytest.fixture
def make(base, tmp_path):
    """``make(rel, **kw)``: a tiny checkpoint at tmp_path/rel sharing the base tokenizer."""

    def build(rel: str, **kw) -> Path:
        return build_tiny_checkpoint(tmp_path / rel, tokenizer_dir=base, **kw)

    return build


def copy_ckpt(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def message(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text, f"error is not one line: {text!r}"
    return text


# -- tiny checkpoints -------------------------------------------------------------------------
def test_default_text_is_deterministic_across_processes():
    """A fresh process (other hash seed, no torch or transformers imported) gives the same text
    as this one, where both are imported: the text must not depend on process state."""
    code = "import hashlib; from ckptsel.tiny import default_text; " \
           "print(hashlib.sha256(default_text().encode()).hexdigest())"
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout.strip()
    assert "torch" in sys.modules and "transformers" in sys.modules
    text = default_text()
    assert fresh == hashlib.sha256(text.encode()).hexdigest()
    assert 190_000 <= len(text) <= 220_000


def test_tokenizer_training_is_deterministic(base):
    a, b = train_tokenizer(), train_tokenizer()
    assert a.get_vocab() == b.get_vocab() and len(a) == 512
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert (a.pad_token_id, a.bos_token_id, a.eos_token_id) == (0, 1, 2)
    text = "Return the number of items in a container."
    assert a.decode(a(text)["input_ids"]) == text


def test_tiny_run_checkpoints_share_tokenizer_and_differ(base, tmp_path):
    dirs = build_tiny_run(tmp_path / "run", steps=(10, 20), tokenizer_dir=base)
    assert [d.name for d in dirs] == ["checkpoint-10", "checkpoint-20"]
    assert (dirs[0] / "tokenizer.json").read_bytes() == (dirs[1] / "tokenizer.json").read_bytes() \
        == (base / "tokenizer.json").read_bytes()
    assert json.loads((dirs[1] / "trainer_state.json").read_text()) == {"global_step": 20}
    assert len({weights_fingerprint([d / "model.safetensors"]) for d in dirs}) == 2


# -- discovery --------------------------------------------------------------------------------
def test_discovery_of_each_naming_scheme(base, tmp_path):
    run = tmp_path / "myrun"
    for name in ("checkpoint-100", "step200", "step-300", "global_step400"):
        copy_ckpt(base, run / name)
    (run / "logs").mkdir()  # not step-named: ignored
    (run / "final").mkdir()
    run_name, dirs = discover(run)
    assert run_name == "myrun"
    assert [d.name for d in dirs] == ["checkpoint-100", "step200", "step-300", "global_step400"]
    assert [inspect_checkpoint(d).step for d in dirs] == [100, 200, 300, 400]


def test_step_from_trainer_state_and_name(base, tmp_path):
    final = copy_ckpt(base, tmp_path / "runs" / "r" / "final")
    (final / "trainer_state.json").write_text(json.dumps({"global_step": 1234, "epoch": 1.0}))
    assert discover(final) == (None, [final.resolve()])  # "final" says nothing about the run
    assert inspect_checkpoint(final).step == 1234
    # The directory name wins over trainer_state.json; the run is the parent's name.
    named = copy_ckpt(final, tmp_path / "runs" / "r" / "step-50")
    assert discover(named) == ("r", [named.resolve()])
    assert inspect_checkpoint(named).step == 50


def test_checkpoint_with_deepspeed_subdir_is_one_checkpoint(base, tmp_path):
    ckpt = copy_ckpt(base, tmp_path / "checkpoint-7")
    (ckpt / "global_step7").mkdir()  # optimizer states, no config.json
    assert discover(ckpt) == (tmp_path.name, [ckpt.resolve()])


def test_trainer_output_dir_is_a_run(base, tmp_path):
    out = copy_ckpt(base, tmp_path / "out")
    copy_ckpt(base, out / "checkpoint-5")
    assert discover(out) == ("out", [(out / "checkpoint-5").resolve()])


# -- sharded checkpoints and metadata ---------------------------------------------------------
def test_sharded_checkpoint_loads_and_fingerprints(make):
    sharded = make("sharded", seed=3, max_shard_size="100KB")
    whole = make("whole", seed=3)
    shards = sorted(sharded.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2 and (sharded / "model.safetensors.index.json").exists()
    info = inspect_checkpoint(sharded)
    assert info.weight_files == shards
    assert weights_fingerprint(info.weight_files) == fingerprint_by_hand(shards)
    # Same weights, other sharding: another fingerprint (the bytes hashed differ), same model.
    assert weights_fingerprint(info.weight_files) != fingerprint_by_hand([whole / "model.safetensors"])
    model, tok = load_model(sharded)
    ref, _ = load_model(whole)
    assert torch.equal(logits(model), logits(ref))
    assert info.metadata["num_parameters"] == ref.num_parameters() == sum(p.numel() for p in ref.parameters())
    assert info.metadata["size_bytes"] == sum(f.stat().st_size for f in shards)
    same = {k: v for k, v in inspect_checkpoint(whole).metadata.items() if k != "size_bytes"}
    assert {k: v for k, v in info.metadata.items() if k != "size_bytes"} == same
    assert info.metadata["dtype"] == "float32" and info.metadata["model_type"] == "llama"
    assert info.metadata["hidden_size"] == 32 and info.metadata["num_layers"] == 2
    assert info.metadata["vocab_size"] == len(tok) and info.metadata["tokenizer"] is True


# -- fingerprints -----------------------------------------------------------------------------
def test_fingerprint_changes_with_one_weight_and_is_stable_otherwise(make, tmp_path):
    from safetensors.torch import load_file, save_file

    a = make("a", seed=1)
    file = a / "model.safetensors"
    before = weights_fingerprint([file])
    assert before == fingerprint_by_hand([file]) == weights_fingerprint([file])
    assert weights_fingerprint([copy_ckpt(a, tmp_path / "copy") / "model.safetensors"]) == before
    # A re-saved identical checkpoint (same seed) has the same bytes, hence the same fingerprint.
    assert weights_fingerprint([make("again", seed=1) / "model.safetensors"]) == before

    tensors = load_file(file)
    name = sorted(tensors)[0]
    tensors[name][0, 0] += 1e-3
    save_file(tensors, file, metadata={"format": "pt"})
    after = weights_fingerprint([file])
    assert after != before and after == fingerprint_by_hand([file])


def test_readding_a_changed_checkpoint_updates_its_fingerprint(make, store):
    from safetensors.torch import load_file, save_file

    ckpt = make("runs/r/checkpoint-10", seed=1)
    (first,) = add_checkpoints(store, [ckpt])
    assert first.id == "r@10"
    tensors = load_file(ckpt / "model.safetensors")
    tensors["lm_head.weight"][3, 4] = 0.5
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    (second,) = add_checkpoints(store, [ckpt])
    assert second.id == first.id and second.fingerprint != first.fingerprint
    assert store.get_checkpoint("r@10").fingerprint == fingerprint_by_hand([ckpt / "model.safetensors"])
    assert len(store.checkpoints()) == 1


# -- registration -----------------------------------------------------------------------------
def test_add_run_ids_paths_and_metadata(base, store, tmp_path, monkeypatch):
    run = tmp_path / "runs" / "pythia-tiny"
    for name in ("step100", "step-200", "global_step300"):
        copy_ckpt(base, run / name)
    lone = copy_ckpt(base, tmp_path / "lone")
    added = add_checkpoints(store, [run, lone])
    assert [c.id for c in added] == ["pythia-tiny@100", "pythia-tiny@200", "pythia-tiny@300", "lone"]
    assert [(c.run, c.step) for c in added] == [("pythia-tiny", 100), ("pythia-tiny", 200),
                                                 ("pythia-tiny", 300), (None, None)]
    assert all(Path(c.path).is_absolute() for c in added)
    # Resolution as predict-pair / rank do it: id, run@step, absolute or relative path.
    assert store.get_checkpoint("pythia-tiny@200").path == str((run / "step-200").resolve())
    assert store.get_checkpoint(str(run / "global_step300")).id == "pythia-tiny@300"
    monkeypatch.chdir(run)
    assert store.get_checkpoint("step100").id == "pythia-tiny@100"
    assert store.get_checkpoint("../../lone").id == "lone"
    # --run overrides the directory's name.
    (renamed,) = add_checkpoints(store, [run / "step100"], run="other")
    assert renamed.id == "other@100"


def test_add_refuses_an_id_taken_by_another_path(base, store, tmp_path):
    add_checkpoints(store, [copy_ckpt(base, tmp_path / "a" / "r" / "checkpoint-1")])
    with pytest.raises(CkptselError) as e:
        add_checkpoints(store, [copy_ckpt(base, tmp_path / "b" / "r" / "checkpoint-1")])
    assert "'r@1' already names" in message(e) and "--run" in message(e)


# -- errors -----------------------------------------------------------------------------------
def test_not_a_checkpoint(tmp_path, store):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CkptselError) as e:
        add_checkpoints(store, [tmp_path / "empty"])
    assert "is not a checkpoint (no config.json)" in message(e)
    with pytest.raises(CkptselError) as e:
        add_checkpoints(store, [tmp_path / "missing"])
    assert "no such directory" in message(e)
    (tmp_path / "run" / "checkpoint-5").mkdir(parents=True)
    with pytest.raises(CkptselError) as e:
        add_checkpoints(store, [tmp_path / "run"])
    assert "checkpoint-5 is not a checkpoint (no config.json)" in message(e)
    assert store.checkpoints() == []


@pytest.mark.parametrize("damage", ["truncate", "header_json", "header_length", "offsets"])
def test_corrupt_safetensors(base, tmp_path, store, damage):
    ckpt = copy_ckpt(base, tmp_path / "c")
    file = ckpt / "model.safetensors"
    raw = bytearray(file.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    if damage == "truncate":
        raw = raw[:-100]
    elif damage == "header_json":
        raw[8:12] = b"\xff{{{"
    elif damage == "header_length":
        raw[:8] = (len(raw) * 2).to_bytes(8, "little")
    else:  # the first tensor's end offset pushed past the data
        header = json.loads(raw[8:8 + n])
        name = next(k for k in header if k != "__metadata__")
        header[name]["data_offsets"][1] += 10 ** 9
        text = json.dumps(header).encode()
        raw = len(text).to_bytes(8, "little") + text + raw[8 + n:]
    file.write_bytes(bytes(raw))
    with pytest.raises(CkptselError) as e:
        add_checkpoints(store, [ckpt])
    assert f"{file} is truncated or corrupt" in message(e)
    with pytest.raises(CkptselError):
        load_model(ckpt)


def test_pickle_checkpoint_refused_unless_allowed(base, make, tmp_path, store):
    from safetensors.torch import load_file

    ckpt = copy_ckpt(base, tmp_path / "runs" / "a" / "step-300")
    state = load_file(ckpt / "model.safetensors")
    (ckpt / "model.safetensors").unlink()
    torch.save(state, ckpt / "pytorch_model.bin")
    expected = (f"checkpoint {ckpt} has no model.safetensors; ckptsel loads safetensors only "
                "(pass --allow-pickle to trust .bin files)")
    with pytest.raises(CkptselError) as e:
        load_model(ckpt)
    assert message(e) == expected
    with pytest.raises(CkptselError) as e:
        add_checkpoints(store, [ckpt])
    assert message(e) == expected

    model, _ = load_model(ckpt, allow_pickle=True)
    ref, _ = load_model(base)
    assert torch.equal(logits(model), logits(ref))
    (c,) = add_checkpoints(store, [ckpt], allow_pickle=True)
    assert c.id == "a@300" and c.metadata["format"] == "pickle"
    assert c.metadata["num_parameters"] == ref.num_parameters()
    assert c.fingerprint == fingerprint_by_hand([ckpt / "pytorch_model.bin"])


def test_unknown_architecture(base, tmp_path, store):
    ckpt = copy_ckpt(base, tmp_path / "weird")
    config = json.loads((ckpt / "config.json").read_text())
    config.update(model_type="nonexistent_arch", architectures=["NonexistentForCausalLM"])
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CkptselError) as e:
        add_checkpoints(store, [ckpt])
    assert "model_type 'nonexistent_arch'" in message(e) and "does not know" in message(e)


def test_remote_code_never_runs(base, tmp_path):
    """A checkpoint shipping its own modeling code: the code must not be imported."""
    marker = tmp_path / "code_ran"
    evil = copy_ckpt(base, tmp_path / "evil")
    (evil / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                           "class EvilForCausalLM: pass\n")
    (evil / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                                "class EvilConfig: pass\n")
    config = json.loads((evil / "config.json").read_text())
    auto_map = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    # An unknown architecture that needs its code: refused, naming the reason.
    (evil / "config.json").write_text(json.dumps({**config, "model_type": "evil", "auto_map": auto_map}))
    with pytest.raises(CkptselError) as e:
        load_model(evil)
    assert "never runs remote code" in message(e)
    # A known architecture with an auto_map: loaded with transformers' own class, code ignored.
    (evil / "config.json").write_text(json.dumps({**config, "auto_map": auto_map}))
    model, _ = load_model(evil)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not marker.exists()


def test_tokenizer_missing(base, tmp_path, store):
    ckpt = copy_ckpt(base, tmp_path / "notok")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (ckpt / f).unlink()
    with pytest.raises(CkptselError) as e:
        load_model(ckpt)
    assert f"checkpoint {ckpt} has no tokenizer" in message(e) and "save_pretrained" in message(e)
    (c,) = add_checkpoints(store, [ckpt])  # registered, and marked as such
    assert c.metadata["tokenizer"] is False


def test_run_mixing_architectures(make, store, tmp_path):
    make("runs/mix/checkpoint-1", seed=0)
    make("runs/mix/checkpoint-2", seed=1)
    make("runs/mix/checkpoint-3", seed=2, hidden_size=64)
    errors: list = []
    added = add_checkpoints(store, [tmp_path / "runs" / "mix"], errors=errors)
    assert [c.id for c in added] == ["mix@1", "mix@2"]
    assert len(errors) == 1 and errors[0][0].endswith("checkpoint-3")
    assert "run 'mix' mixes architectures: mix@3 is" in errors[0][1] and "hidden 64" in errors[0][1] \
        and "hidden 32" in errors[0][1] and "mix@1" in errors[0][1]
    # Later additions are checked against what the store already holds for the run.
    make("runs/mix/checkpoint-4", seed=3, num_layers=3)
    with pytest.raises(CkptselError) as e:
        add_checkpoints(store, [tmp_path / "runs" / "mix" / "checkpoint-4"])
    assert "layers 3" in message(e) and "layers 2" in message(e)


# -- loading ----------------------------------------------------------------------------------
def test_load_model_dtype_device_and_eval(base):
    model, tok = load_model(base)
    assert not model.training
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>"
    model16, _ = load_model(base, dtype="bf16", device="cpu")
    assert {p.dtype for p in model16.parameters()} == {torch.bfloat16}
    with pytest.raises(CkptselError) as e:
        load_model(base, dtype="float13")
    assert "unknown dtype 'float13'" in message(e)


# -- command line -----------------------------------------------------------------------------
def test_cli_add_and_list(make, tmp_path, capsys):
    for step in (100, 200):
        make(f"runs/tiny/checkpoint-{step}", seed=step)
    bad = tmp_path / "runs" / "tiny" / "checkpoint-300"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "nonexistent_arch"}))
    ws = tmp_path / "ws"
    # As users run it: a subprocess; one bad checkpoint among good ones exits 1, no traceback.
    proc = run_cli("--workspace", ws, "add", "--json", tmp_path / "runs" / "tiny")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    err_lines = proc.stderr.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("ckptsel: error: checkpoint ") \
        and "checkpoint-300" in err_lines[0] and "nonexistent_arch" in err_lines[0]
    out = json.loads(proc.stdout)
    assert [c["id"] for c in out["added"]] == ["tiny@100", "tiny@200"]
    assert [e["path"] for e in out["errors"]] == [str(bad)]
    listed = check_ok(run_cli("--workspace", ws, "list"))
    assert "tiny@100" in listed.stdout and "tiny@200" in listed.stdout and "2 checkpoints" in listed.stdout
    with Store(ws / "ckptsel.db", create=False) as store:
        for c in store.checkpoints():
            assert c.fingerprint == fingerprint_by_hand([Path(c.path) / "model.safetensors"])

    # The human-readable form, in process (the subprocess start-up is paid once above).
    from ckptsel.cli import main

    shutil.rmtree(bad)
    assert main(["--workspace", str(ws), "add", "--run", "renamed", str(tmp_path / "runs" / "tiny")]) == 0
    text = capsys.readouterr().out
    assert "renamed@100" in text and "renamed@200" in text and "added 2 checkpoints" in text
    assert main(["--workspace", str(ws), "add", str(tmp_path / "nowhere")]) == 1
    assert "ckptsel: error: " in capsys.readouterr().err
