"""LoRA SFT throughput of a 1B-shaped Llama on a GPU, through ckptsel's own fine-tuning loop.

    .venv/bin/python bench/finetune_gpu.py                 # GPU: 1.1B-parameter model, 50 steps
    .venv/bin/python bench/finetune_gpu.py --tiny          # CPU smoke test of the same path

The model is a random-init ``LlamaForCausalLM`` shaped like a 1.1B model (hidden 2048,
intermediate 5632, 22 layers, 32 heads, 4 key/value heads, vocab 32000; about 1.1e9
parameters), built in fp32 on the device (bf16 autocast in the loop). ``ckptsel.finetune.train`` runs the task:
LoRA r=8 on all linear layers, batch 8 x 512 tokens (prompt + completion, loss on the
completion), AdamW, bf16 autocast on CUDA, 50 optimizer steps, timed after a 5-step warm-up
on a separate model (model build is not timed).

Reported: tokens/s (all tokens in the batch, padding included, over the timed steps), peak
GPU memory (``torch.cuda.max_memory_allocated``), and model FLOPs utilisation

    MFU = tokens/s x FLOPs/token / peak dense bf16 FLOP/s of the GPU

with FLOPs/token = 4 N (forward 2N, backward through frozen weights 2N; the adapters' own
weight gradients are negligible) + 12 L T d (attention scores and values, forward and
backward), N = parameters, L = layers, T = sequence length, d = hidden size. Peak: 989e12
FLOP/s for H100/H200 SXM (dense bf16). The figures are appended to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def make_task(tmp: Path, *, max_length: int, steps: int, batch: int, words: int):
    """A prompt/completion task from the default text: ``words`` words, then the next ``words``."""
    from ckptsel.finetune import load_task
    from ckptsel.tiny import default_text

    toks = default_text().split()
    rows = []
    for i in range(0, len(toks) - 2 * words, words):
        rows.append({"prompt": " ".join(toks[i:i + words]), "completion": " " + " ".join(toks[i + words:i + 2 * words])})
    for split in ("train", "eval"):
        (tmp / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:400]))
    (tmp / "task.yaml").write_text(
        "name: gpu_bench\ntype: prompt_completion\ntrain: train.jsonl\neval: eval.jsonl\nmetric: eval_loss\n"
        f"method: lora\nlora: {{r: 8, alpha: 16, dropout: 0.0, target_modules: all-linear}}\n"
        f"learning_rate: 1.0e-4\nmax_steps: {steps}\nbatch_size: {batch}\nmax_length: {max_length}\n")
    return load_task(tmp / "task.yaml")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a 2-layer hidden-64 model on CPU (smoke test)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="do not append to bench/RESULTS.md")
    args = ap.parse_args(argv)

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ckptsel.finetune import train
    from ckptsel.tiny import train_tokenizer

    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    if args.tiny:
        shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=4, vocab_size=32000)
        args.steps, args.warmup, args.batch, args.seq = min(args.steps, 8), 2, 4, 128
    else:
        if not cuda:
            print("no CUDA device: run with --tiny for the CPU smoke test", file=sys.stderr)
            return 2
        shape = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                     num_key_value_heads=4, vocab_size=32000)
    tokenizer = train_tokenizer(vocab_size=4096)
    config = LlamaConfig(**shape, max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)

    def build():
        torch.manual_seed(0)
        with torch.device(device):
            model = LlamaForCausalLM(config)
        if args.gradient_checkpointing:
            (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
            model.enable_input_require_grads()
        return model

    with tempfile.TemporaryDirectory() as tmp:
        # Prompt and completion have seq/2 words each (>= seq tokens together), so every row is
        # cut to exactly seq tokens: a batch holds exactly batch x seq tokens, no padding.
        words = args.seq // 2
        warm = make_task(Path(tmp), max_length=args.seq, steps=args.warmup, batch=args.batch, words=words)
        model = build()
        n_params = sum(p.numel() for p in model.parameters())
        train(model, tokenizer, warm, seed=0, progress=False)   # warm-up: kernels, allocator
        del model
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        task = make_task(Path(tmp), max_length=args.seq, steps=args.steps, batch=args.batch, words=words)
        model = build()
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        _, losses = train(model, tokenizer, task, seed=0, progress=sys.stderr.isatty())
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    tokens = args.steps * args.batch * args.seq
    tok_s = tokens / seconds
    L, d = shape["num_hidden_layers"], shape["hidden_size"]
    flops_per_token = 4 * n_params + 12 * L * args.seq * d
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    result = {
        "device": name, "params": n_params, "steps": args.steps, "batch": args.batch, "seq": args.seq,
        "gradient_checkpointing": args.gradient_checkpointing, "seconds": round(seconds, 3),
        "tokens_per_s": round(tok_s, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "mfu": round(tok_s * flops_per_token / peak, 4) if peak else None,
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
    }
    print(json.dumps(result, indent=2))
    if not args.no_write and not args.tiny:
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write(f"\n## finetune_gpu.py, {time.strftime('%Y-%m-%d')}, {name}\n\n```json\n"
                    f"{json.dumps(result, indent=2)}\n```\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
