"""Checkpoint averaging: ``ckptsel average`` against mergekit's ``linear`` merge.

    .venv/bin/python bench/average.py [--repeats 3] [--mergekit PATH] [--json] [--keep]

Builds three random-init ``LlamaForCausalLM`` checkpoints once (fp32, hidden 768, 12 layers,
12 heads, MLP 1024, vocabulary 32000, untied head: 106M parameters, 423 MB each; no tokenizer),
then runs, alternating and ``--repeats`` times each, as subprocesses on the same warm inputs:

    ours      ckptsel average IN0 IN1 IN2 -o OUT
    mergekit  mergekit-yaml CONFIG OUT --no-copy-tokenizer --quiet
              (CONFIG: merge_method linear, weight 1.0 for each input, dtype float32)

Each run is started by a small wrapper process that measures the wall time around it and its
peak RSS (``ru_maxrss`` of RUSAGE_CHILDREN). It prints the max abs difference between the two outputs over every tensor
(target <= 1e-6; the arithmetic is mergekit's, so it should be 0), the median wall time ratio
ours/mergekit (target <= 1.0) and the median peak-RSS ratio ours/mergekit (target <= 0.5).

mergekit pins its own torch and transformers, so it lives in a separate virtual environment:

    python3 -m venv /tmp/mkvenv && /tmp/mkvenv/bin/pip install torch==2.13.0 mergekit

``--mergekit`` (default: ``$MERGEKIT_YAML``, ``mergekit-yaml`` on PATH, then
``/tmp/mkvenv/bin/mergekit-yaml``) names its ``mergekit-yaml``. Without one (or with ``--naive``),
the baseline is a naive script instead, labelled as such: ``safetensors.torch.load_file`` of every input,
``sum(w_i * t_i) / sum(w)`` per tensor, ``save_file``. Exits 1 if the outputs differ by more
than 1e-6 or a tool fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from _common import base_parser, clean_env, emit, log, median, script, workdir

MAX_ABS_TARGET = 1e-6
WALL_TARGET = 1.0
RSS_TARGET = 0.5

NAIVE = """\
import sys
from safetensors.torch import load_file, save_file
weights = [float(w) for w in sys.argv[1].split(",")]
*inputs, out = sys.argv[2:]
states = [load_file(p + "/model.safetensors") for p in inputs]
mean = {k: sum(w * s[k] for w, s in zip(weights, states)) / sum(weights) for k in states[0]}
import os, shutil
os.makedirs(out)
save_file(mean, out + "/model.safetensors", metadata={"format": "pt"})
shutil.copy(inputs[-1] + "/config.json", out + "/config.json")
"""


def build_inputs(root: Path, args) -> list[Path]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, tie_word_embeddings=False)
    paths = []
    for i in range(3):
        torch.manual_seed(args.seed + i)
        model = LlamaForCausalLM(config)
        with torch.no_grad():  # random norms too, so no tensor is the same in all three
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.uniform_(0.5, 1.5)
        path = root / f"in{i}"
        model.save_pretrained(path)
        paths.append(path)
        n_params = sum(p.numel() for p in model.parameters())
        del model
    log(f"built 3 checkpoints of {n_params / 1e6:.1f}M parameters (fp32, "
        f"{(paths[0] / 'model.safetensors').stat().st_size / 1e6:.0f} MB each) in {root}")
    return paths


def find_mergekit(explicit: str | None) -> str | None:
    if explicit and not (Path(explicit).is_file() and os.access(explicit, os.X_OK)):
        sys.exit(f"--mergekit {explicit}: no such executable")
    for candidate in (explicit, os.environ.get("MERGEKIT_YAML"), shutil.which("mergekit-yaml"),
                      "/tmp/mkvenv/bin/mergekit-yaml"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def mergekit_version(exe: str) -> str:
    python = Path(exe).parent / "python"
    proc = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('mergekit'))"],
                          capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


# Measures one command from a fresh, small Python: on Linux a child's ru_maxrss starts from the
# RSS of the process it was forked from (kept across exec), so forking the tools straight from
# this process, which holds models in memory, would overstate their peak.
MEASURE = """\
import json, resource, subprocess, sys, time
started = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
wall = time.perf_counter() - started
print(json.dumps({"rc": proc.returncode, "wall": wall, "stderr": proc.stderr.decode(errors="replace")[-4000:],
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def measure(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one subprocess, started by a small wrapper; exits if it fails."""
    proc = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True, env=clean_env())
    if proc.returncode != 0:
        sys.exit(f"measuring wrapper failed: {proc.stderr[-4000:]}")
    result = json.loads(proc.stdout)
    if result["rc"] != 0:
        sys.exit(f"command failed ({result['rc']}): {' '.join(cmd)}\n{result['stderr']}")
    return result["wall"], result["maxrss_kb"] / 1024  # ru_maxrss is in kB on Linux


def compare(ours: Path, theirs: Path) -> dict:
    """``{tensor: (max abs difference in float64, bit-identical)}`` between two checkpoint directories."""
    import torch
    from safetensors import safe_open

    def tensors(path: Path) -> dict[str, Path]:
        out = {}
        for f in sorted(path.glob("*.safetensors")):
            with safe_open(f, "pt") as h:
                out.update({k: f for k in h.keys()})
        return out

    a, b = tensors(ours), tensors(theirs)
    if set(a) != set(b):
        sys.exit(f"the outputs hold different tensors: only ours {sorted(set(a) - set(b))[:5]}, "
                 f"only theirs {sorted(set(b) - set(a))[:5]}")
    diffs = {}
    for name in sorted(a):
        with safe_open(a[name], "pt") as fa, safe_open(b[name], "pt") as fb:
            x, y = fa.get_tensor(name), fb.get_tensor(name)
            if x.shape != y.shape or x.dtype != y.dtype:
                sys.exit(f"tensor {name}: ours {x.dtype} {list(x.shape)}, theirs {y.dtype} {list(y.shape)}")
            diff = (x.double() - y.double()).abs().max().item() if x.numel() else 0.0
            diffs[name] = (diff, torch.equal(x, y))
    return diffs


def main() -> int:
    parser = base_parser(" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--repeats", type=int, default=3, help="runs of each tool, alternating (default 3)")
    parser.add_argument("--mergekit", help="path of mergekit-yaml (see the module docstring)")
    parser.add_argument("--naive", action="store_true", help="compare against the naive baseline even if "
                                                              "mergekit is installed")
    parser.add_argument("--weights", default="1,1,1", help="weights of the three inputs, given to both tools "
                                                              "(default 1,1,1)")
    parser.add_argument("--per-tensor", action="store_true", help="print the max abs difference of every tensor")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--intermediate", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32000)
    args = parser.parse_args()

    weights = [float(w) for w in args.weights.split(",")]
    if len(weights) != 3:
        sys.exit("--weights takes three numbers")
    exe = None if args.naive else find_mergekit(args.mergekit)
    with workdir(args.keep, prefix="ckptsel-bench-average-") as root:
        inputs = build_inputs(root, args)
        if exe:
            label, baseline = "mergekit", f"mergekit {mergekit_version(exe)} linear ({exe})"
            config = root / "linear.yaml"
            models = "".join(f"  - model: {p}\n    parameters:\n      weight: {w!r}\n" for p, w in zip(inputs, weights))
            config.write_text(f"merge_method: linear\nmodels:\n{models}dtype: float32\n")

            def theirs_cmd(out):
                return [exe, str(config), str(out), "--no-copy-tokenizer", "--quiet"]
        else:
            label, baseline = "naive", "NAIVE load_file of every input, sum(w_i * t_i) / sum(w), save_file (NOT mergekit)"
            if not args.naive:
                log("mergekit-yaml not found (pass --mergekit or see the docstring); comparing against a naive "
                    "baseline")

            def theirs_cmd(out):
                return [sys.executable, "-c", NAIVE, args.weights, *map(str, inputs), str(out)]
        ours_cmd = [script("ckptsel"), "average", *map(str, inputs), "--weights", args.weights, "-o"]

        runs = {"ours": [], "baseline": []}
        diffs = None
        for r in range(args.repeats):
            order = ["ours", "baseline"] if r % 2 == 0 else ["baseline", "ours"]
            outs = {}
            for who in order:
                out = root / f"out-{who}-{r}"
                cmd = ours_cmd + [str(out)] if who == "ours" else theirs_cmd(out)
                wall, rss = measure(cmd)
                runs[who].append((wall, rss))
                outs[who] = out
                log(f"repeat {r + 1}/{args.repeats} {who if who == 'ours' else label:<8} wall {wall:6.2f}s  peak RSS {rss:7.0f} MB")
            if diffs is None:
                diffs = compare(outs["ours"], outs["baseline"])
            for out in outs.values():
                shutil.rmtree(out)

    wall = {who: median([w for w, _ in v]) for who, v in runs.items()}
    rss = {who: median([m for _, m in v]) for who, v in runs.items()}
    max_abs = max(d for d, _ in diffs.values())
    worst = max(diffs, key=lambda k: diffs[k][0])
    n_identical = sum(same for _, same in diffs.values())
    figures = {"baseline": baseline, "baseline_label": label, "weights": weights, "repeats": args.repeats, "n_tensors": len(diffs),
               "n_bit_identical": n_identical, "max_abs_diff": max_abs, "worst_tensor": worst,
               "wall_s": wall, "peak_rss_mb": rss, "runs": runs,
               "per_tensor_max_abs_diff": {k: d for k, (d, _) in diffs.items()}}
    lines = [f"baseline: {baseline}"]
    if args.per_tensor:
        lines += [f"  {k:<48} {d:.3g}{'' if same else '  (not bit-identical)'}" for k, (d, same) in diffs.items()]
    lines += [
        f"max abs difference over all {len(diffs)} tensors: {max_abs:.3g} (largest in {worst}); "
        f"{n_identical}/{len(diffs)} tensors bit-identical",
        f"median wall:     ours {wall['ours']:.2f}s   {label} {wall['baseline']:.2f}s",
        f"median peak RSS: ours {rss['ours']:.0f} MB   {label} {rss['baseline']:.0f} MB",
    ]
    ratio_lines = "\n".join([
        f"RATIO max_abs_diff ours-vs-{label} = {max_abs:.3g} (target <= {MAX_ABS_TARGET:g})",
        f"RATIO wall ours/{label} = {wall['ours'] / wall['baseline']:.2f} (target <= {WALL_TARGET:g})",
        f"RATIO peak_rss ours/{label} = {rss['ours'] / rss['baseline']:.2f} (target <= {RSS_TARGET:g})",
    ])
    emit(figures, lines, ratio_lines, args.json)
    return 1 if max_abs > MAX_ABS_TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
