"""``ckptsel average``: the parameter mean of real tiny checkpoints, checked against torch means
computed here from the inputs' state dicts, plus sharding, loading with transformers, and each
user error (one line, nothing written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ckptsel import averaging
from ckptsel.averaging import average_checkpoints, parse_size, parse_weights
from ckptsel.errors import CkptselError
from ckptsel.tiny import build_tiny_checkpoint, default_text
from helpers_tables import check_ok, run_cli


def state(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (single file or shards)."""
    out: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def weighted_mean(states: list[dict], weights: list[float]) -> dict[str, torch.Tensor]:
    """sum_i w_i theta_i / sum_i w_i in float64, straight from the state dicts."""
    total = sum(weights)
    return {k: sum(w * s[k].double() for w, s in zip(weights, states)) / total for k in states[0]}


def assert_close(got: dict, want: dict, tol: float) -> None:
    assert set(got) == set(want)
    for k in want:
        assert got[k].shape == want[k].shape, k
        diff = (got[k].double() - want[k].double()).abs().max().item()
        assert diff <= tol, f"{k}: max abs diff {diff}"


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert leftovers == []


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> list[Path]:
    """Three random-init tiny Llamas (seeds 0, 1, 2). The last has its own tokenizer (trained on
    other text), a longer context and another generation config, to tell its files apart."""
    root = tmp_path_factory.mktemp("inputs")
    a = build_tiny_checkpoint(root / "a", seed=0)
    b = build_tiny_checkpoint(root / "b", seed=1, tokenizer_dir=a)
    c = build_tiny_checkpoint(root / "c", seed=2, text=default_text()[::-1])
    config = json.loads((c / "config.json").read_text())
    config["max_position_embeddings"] = 1024
    (c / "config.json").write_text(json.dumps(config, indent=2))
    gen = json.loads((c / "generation_config.json").read_text())
    gen["max_length"] = 77
    (c / "generation_config.json").write_text(json.dumps(gen, indent=2))
    return [a, b, c]


@pytest.fixture(scope="module")
def averaged(ckpts, tmp_path_factory) -> Path:
    return average_checkpoints(ckpts, tmp_path_factory.mktemp("out") / "avg")


def test_uniform_average_is_the_torch_mean(ckpts, averaged):
    states = [state(p) for p in ckpts]
    want = {k: torch.stack([s[k].double() for s in states]).mean(0) for k in states[0]}
    got = state(averaged)
    assert all(t.dtype == torch.float32 for t in got.values())
    assert_close(got, want, 1e-7)
    assert not (averaged / "model.safetensors.index.json").exists()
    record = json.loads((averaged / "ckptsel_average.json").read_text())
    assert record["inputs"] == [str(p) for p in ckpts]
    assert record["weights"] == pytest.approx([1 / 3] * 3)


def test_weighted_average_1_2_1(ckpts, tmp_path):
    out = average_checkpoints(ckpts, tmp_path / "w", weights="1,2,1")
    a, b, c = (state(p) for p in ckpts)
    want = {k: (a[k].double() + 2 * b[k].double() + c[k].double()) / 4 for k in a}
    assert_close(state(out), want, 1e-7)
    assert json.loads((out / "ckptsel_average.json").read_text())["weights"] == [0.25, 0.5, 0.25]


def test_a_zero_weight_leaves_that_checkpoint_out(ckpts, tmp_path):
    out = average_checkpoints(ckpts, tmp_path / "w", weights=[0, 3, 1])
    assert_close(state(out), weighted_mean([state(p) for p in ckpts], [0, 3, 1]), 1e-7)


def test_blocks_smaller_than_a_tensor_give_the_same_bits(ckpts, averaged, tmp_path, monkeypatch):
    # 1000 bytes of accumulator per block: every matrix is split into many row blocks.
    monkeypatch.setattr(averaging, "_BLOCK_BYTES", 1000)
    out = average_checkpoints(ckpts, tmp_path / "blocks")
    got, want = state(out), state(averaged)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_sharded_inputs_and_outputs_round_trip(ckpts, averaged, tmp_path):
    # The same weights as ckpts[0] and ckpts[1], saved in shards of at most 60 kB.
    sharded = [build_tiny_checkpoint(tmp_path / f"s{i}", seed=i, tokenizer_dir=ckpts[0], max_shard_size="60KB")
               for i in (0, 1)]
    for s in sharded:
        assert (s / "model.safetensors.index.json").is_file()
    inputs = [*sharded, ckpts[2]]
    out = average_checkpoints(inputs, tmp_path / "out", max_shard_size="50KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(files) > 2 and not (out / "model.safetensors").exists()
    assert sorted(set(index["weight_map"].values())) == [f.name for f in files]
    got = state(out)
    assert set(index["weight_map"]) == set(got)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in got.values())
    for f in files:  # no shard over the limit unless it holds a single larger tensor
        tensors = load_file(f)
        assert len(tensors) == 1 or sum(t.numel() * 4 for t in tensors.values()) <= 50_000
    want = state(averaged)
    assert all(torch.equal(got[k], want[k]) for k in want)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True)
    assert all(torch.equal(p, want[k]) for k, p in model.state_dict().items())
    # ... and a sharded output is itself a valid (sharded) input: the mean of one checkpoint is itself.
    again = average_checkpoints([out], tmp_path / "again")
    assert all(torch.equal(t, want[k]) for k, t in state(again).items())


def test_output_loads_with_transformers_and_has_the_last_inputs_files(ckpts, averaged):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(str(averaged), local_files_only=True)
    assert model.config.max_position_embeddings == 1024
    assert GenerationConfig.from_pretrained(str(averaged)).max_length == 77
    want = state(averaged)
    for name, p in model.state_dict().items():
        assert torch.equal(p, want[name]), name
    last = ckpts[-1]
    assert (averaged / "config.json").read_text() == (last / "config.json").read_text()
    assert (averaged / "tokenizer.json").read_bytes() == (last / "tokenizer.json").read_bytes()
    assert (averaged / "tokenizer.json").read_bytes() != (ckpts[0] / "tokenizer.json").read_bytes()
    tok = AutoTokenizer.from_pretrained(str(averaged), local_files_only=True)
    ids = tok("The quick brown fox", return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == AutoTokenizer.from_pretrained(str(last))("The quick brown fox")["input_ids"]
    with torch.inference_mode():
        assert torch.isfinite(model(ids).logits).all()


def test_bf16_inputs_give_a_bf16_mean(ckpts, tmp_path):
    inputs = []
    for i, p in enumerate(ckpts[:2]):
        d = tmp_path / f"bf{i}"
        shutil.copytree(p, d)
        save_file({k: t.to(torch.bfloat16) for k, t in load_file(d / "model.safetensors").items()},
                  d / "model.safetensors", metadata={"format": "pt"})
        inputs.append(d)
    got = state(average_checkpoints(inputs, tmp_path / "out"))
    states = [state(p) for p in inputs]
    for k, t in got.items():
        assert t.dtype == torch.bfloat16
        want = (states[0][k].double() + states[1][k].double()) / 2
        # one rounding to bf16 (8 significant bits): within half an ulp, 2^-9 relative
        assert ((t.double() - want).abs() <= want.abs() * 2.0 ** -8 + 1e-30).all(), k


def test_overwrite_replaces_an_existing_output(ckpts, averaged, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    average_checkpoints(ckpts, out, overwrite=True)
    assert not (out / "stale.txt").exists()
    assert all(torch.equal(t, state(averaged)[k]) for k, t in state(out).items())
    assert [p.name for p in tmp_path.iterdir()] == ["o"]


# -- errors ---------------------------------------------------------------------------------------
def _copy_with_tensors(src: Path, dst: Path, change) -> Path:
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    change(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def _gpt2(dst: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=512, n_embd=32, n_layer=2, n_head=4, n_positions=64)).save_pretrained(dst)
    return dst


def _bin_only(src: Path, dst: Path) -> Path:
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    torch.save(load_file(src / "model.safetensors"), dst / "pytorch_model.bin")
    return dst


def _truncated(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    data = (dst / "model.safetensors").read_bytes()
    (dst / "model.safetensors").write_bytes(data[:-100])
    return dst


def _shape(t):
    t["model.layers.0.mlp.up_proj.weight"] = torch.zeros(65, 32)


def _dtype(t):
    t["model.norm.weight"] = t["model.norm.weight"].to(torch.float16)


def _missing(t):
    del t["lm_head.weight"]


ERROR_CASES = {
    "shape": (lambda c, d: _copy_with_tensors(c[1], d, _shape),
              ["model.layers.0.mlp.up_proj.weight", "[64, 32]", "[65, 32]"]),
    "dtype": (lambda c, d: _copy_with_tensors(c[1], d, _dtype), ["model.norm.weight", "F32", "F16"]),
    "missing tensor": (lambda c, d: _copy_with_tensors(c[1], d, _missing), ["lm_head.weight", "not in"]),
    "architecture": (lambda c, d: _gpt2(d), ["different architectures", "'llama'", "'gpt2'"]),
    "bin only": (lambda c, d: _bin_only(c[1], d), ["pickled .bin", "safetensors only"]),
    "no config": (lambda c, d: (d.mkdir(), d)[1], ["no config.json"]),
    "truncated": (lambda c, d: _truncated(c[1], d), ["truncated"]),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_inputs_are_one_line_errors_and_write_nothing(ckpts, tmp_path, case):
    make, words = ERROR_CASES[case]
    bad = make(ckpts, tmp_path / "bad")
    out = tmp_path / "out"
    with pytest.raises(CkptselError) as err:
        average_checkpoints([ckpts[0], bad], out)
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    assert str(bad) in msg
    assert_nothing_written(out)


@pytest.mark.parametrize("weights, words", [
    ("1,x,1", "not a comma-separated list"), ("1,2", "2 values for 3"), ("0,0,0", "sum to zero"),
    ("1,-1,1", "negative"), ("1,nan,1", "non-finite"), ("", "not a comma-separated list"),
])
def test_bad_weights_are_one_line_errors_and_write_nothing(ckpts, tmp_path, weights, words):
    out = tmp_path / "out"
    with pytest.raises(CkptselError, match=words) as err:
        average_checkpoints(ckpts, out, weights=weights)
    assert "\n" not in str(err.value)
    assert_nothing_written(out)


def test_existing_output_and_output_among_inputs_are_refused(ckpts, averaged):
    with pytest.raises(CkptselError, match="already exists"):
        average_checkpoints(ckpts, averaged)
    with pytest.raises(CkptselError, match="one of the inputs"):
        average_checkpoints(ckpts, ckpts[0], overwrite=True)


def test_parse_weights_and_sizes():
    assert parse_weights(None, 3) is None
    assert parse_weights(" 1, 2 ,1", 3) == [1.0, 2.0, 1.0]
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30
    assert parse_size("500kb") == 500_000 and parse_size(123) == 123
    with pytest.raises(CkptselError, match="not a size"):
        parse_size("five gigs")


# -- the command line ----------------------------------------------------------------------------
def test_cli_average_weighted_json(ckpts, tmp_path):
    out = tmp_path / "cli"
    proc = check_ok(run_cli("average", *ckpts, "-o", out, "--weights", "1,2,1", "--json"))
    result = json.loads(proc.stdout)
    assert result["output"] == str(out) and result["weights"] == [0.25, 0.5, 0.25]
    assert result["inputs"] == [str(p) for p in ckpts]
    assert_close(state(out), weighted_mean([state(p) for p in ckpts], [1, 2, 1]), 1e-7)


def test_cli_error_exits_2_with_one_line(ckpts, tmp_path):
    out = tmp_path / "cli"
    proc = run_cli("average", *ckpts, "-o", out, "--weights", "1,2")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ckptsel: error: --weights has 2 values for 3 checkpoints")
    assert_nothing_written(out)
