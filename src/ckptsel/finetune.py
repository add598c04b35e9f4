"""Fine-tuning outcomes: LoRA (or full) SFT of each checkpoint on a task, evaluated, stored as labels.

A task is a YAML file (see ``configs/sft/tiny_mc.yaml``)::

    name: tiny_mc
    type: multiple_choice        # rows {"query", "choices", "gold"}; or prompt_completion: {"prompt", "completion"}
    train: ../../data/sft/tiny_mc.train.jsonl
    eval: ../../data/sft/tiny_mc.eval.jsonl
    metric: acc                  # multiple_choice: acc | acc_norm | eval_loss; prompt_completion: eval_loss | exact_match
    method: lora                 # or full
    lora: {r: 8, alpha: 16, dropout: 0.0, target_modules: all-linear}
    learning_rate: 1.0e-3
    max_steps: 40                # or epochs: N (optimizer steps = N * ceil(rows / (batch_size * accumulation)))
    batch_size: 8
    gradient_accumulation_steps: 1
    max_length: 128
    num_cpus: 1                  # what one job (checkpoint, seed) asks of a Ray cluster; not hashed
    num_gpus: 0
    gradient_checkpointing: false  # recompute activations in backward: less memory, ~30% slower; not hashed

Training (nanoGPT style, no Trainer): AdamW on the trainable parameters; every example is
``prompt + completion`` (multiple choice: ``query + target_delimiter + choices[gold]``), the
loss is the mean next-token cross-entropy over completion tokens only (prompt and padding
positions get label ``-100``). Seeds (``random``, ``numpy``, ``torch``) are set before the
LoRA adapter is created and before the data order is drawn, so one seed gives one adapter.

Evaluation on the held-out split: multiple choice by log-likelihood, scored by
``ckptsel.indicators.kshot.run_task`` (lm-evaluation-harness's ``acc``/``acc_norm``, zero-shot);
``exact_match`` by greedy generation (``kshot``'s rule: ``gen.strip() == completion.strip()``);
``eval_loss`` = mean completion-token cross-entropy (nats/token) over the split (multiple
choice: the gold choice is the completion).

Labels: ``sft/<task>/<metric>`` = mean over seeds, with the sample std (ddof=1; 0 for one seed)
and n = number of seeds, keyed by the checkpoint fingerprint and ``label_hash`` = hash of the
task hash (resolved YAML + data file SHA-256) and the seed list. Adapters and a per-seed
``result.json`` live in ``<workspace>/adapters/<fingerprint[:16]>/<task_hash>/seed<k>/``.
"""

from __future__ import annotations

import json
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ckptsel.errors import CkptselError
from ckptsel.executor import RESOURCE_KEYS, Job, LocalExecutor, Resources, resources_from
from ckptsel.store import Checkpoint, Store, spec_hash

VERSION = 1
_KEYS = {"name", "type", "train", "eval", "metric", "method", "lora", "learning_rate", "max_steps", "epochs",
         "batch_size", "gradient_accumulation_steps", "max_length", "weight_decay", "target_delimiter",
         "eval_limit", "max_gen_tokens", "gradient_checkpointing", *RESOURCE_KEYS}
_METRICS = {"multiple_choice": ("acc", "acc_norm", "eval_loss"), "prompt_completion": ("eval_loss", "exact_match")}


@dataclass(frozen=True)
class SFTTask:
    name: str
    type: str
    train: Path
    eval: Path
    metric: str
    method: str = "lora"
    lora: dict = field(default_factory=dict)
    learning_rate: float = 1e-3
    max_steps: int | None = None
    epochs: int | None = None
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 256
    weight_decay: float = 0.0
    target_delimiter: str = " "
    eval_limit: int | None = None
    max_gen_tokens: int = 16
    hash: str = ""
    resources: Resources = Resources()  # not in the hash: where a job runs does not change its numbers
    gradient_checkpointing: bool = False  # not in the hash: same numbers, less memory
    source: Path | None = None  # the task YAML; not in the hash (a copy elsewhere gives the same labels)

    @property
    def target(self) -> str:
        return f"sft/{self.name}/{self.metric}"

    def label_hash(self, seeds: Sequence[int]) -> str:
        return spec_hash({"task": self.hash, "seeds": [int(s) for s in seeds]})


def load_task(path: str | Path) -> SFTTask:
    """Read and validate an SFT task YAML; its ``hash`` covers the resolved settings and data bytes."""
    from ckptsel.indicators.spec import check_keys, file_sha256, read_yaml_mapping

    path = Path(path).expanduser().resolve()
    data = read_yaml_mapping(path, "SFT task", "pass --task configs/sft/NAME.yaml")
    where = f"SFT task {path.name}"
    check_keys(data, _KEYS, where)
    kind = data.get("type", "prompt_completion")
    if kind not in _METRICS:
        raise CkptselError(f"{where}: type must be multiple_choice or prompt_completion, not {kind!r}")
    metric = data.get("metric", _METRICS[kind][0])
    if metric not in _METRICS[kind]:
        raise CkptselError(f"{where}: metric {metric!r} does not fit type {kind}; use one of {', '.join(_METRICS[kind])}")
    method = data.get("method", "lora")
    if method not in ("lora", "full"):
        raise CkptselError(f"{where}: method must be lora or full, not {method!r}")
    files = {}
    for key in ("train", "eval"):
        value = data.get(key)
        if not isinstance(value, str):
            raise CkptselError(f"{where}: '{key}' must be a JSONL file path")
        p = Path(value).expanduser()
        p = (p if p.is_absolute() else path.parent / p).resolve()
        if not p.is_file():
            raise CkptselError(f"{where}: {key} file {p} does not exist; fix the path (relative to {path.parent})")
        files[key] = p
    if (data.get("max_steps") is None) == (data.get("epochs") is None):
        raise CkptselError(f"{where}: set exactly one of max_steps and epochs")
    for key in ("max_steps", "epochs", "batch_size", "gradient_accumulation_steps", "max_length", "eval_limit",
                "max_gen_tokens"):
        v = data.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise CkptselError(f"{where}: {key} must be a positive integer, not {v!r}")
    lora = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear", **(data.get("lora") or {})}
    bad = sorted(set(lora) - {"r", "alpha", "dropout", "target_modules"})
    if bad:
        raise CkptselError(f"{where}: unknown lora key {bad[0]!r}; allowed: r, alpha, dropout, target_modules")
    try:
        lr, wd = float(data.get("learning_rate", 1e-3)), float(data.get("weight_decay", 0.0))
    except (TypeError, ValueError) as e:
        raise CkptselError(f"{where}: learning_rate and weight_decay must be numbers") from e
    settings = dict(
        name=str(data.get("name") or path.stem), type=kind, metric=metric, method=method,
        lora=lora if method == "lora" else {}, learning_rate=lr, max_steps=data.get("max_steps"),
        epochs=data.get("epochs"), batch_size=data.get("batch_size", 8),
        gradient_accumulation_steps=data.get("gradient_accumulation_steps", 1),
        max_length=data.get("max_length", 256), weight_decay=wd,
        target_delimiter=str(data.get("target_delimiter", " ")), eval_limit=data.get("eval_limit"),
        max_gen_tokens=data.get("max_gen_tokens", 16),
    )
    digest = spec_hash({**settings, "train_sha256": file_sha256(files["train"]),
                        "eval_sha256": file_sha256(files["eval"]), "version": VERSION})
    gc = data.get("gradient_checkpointing", False)
    if not isinstance(gc, bool):
        raise CkptselError(f"{where}: gradient_checkpointing must be true or false, not {gc!r}")
    return SFTTask(train=files["train"], eval=files["eval"], hash=digest, resources=resources_from(data, where),
                   gradient_checkpointing=gc, source=path, **settings)


# -- data -------------------------------------------------------------------------------------
def read_pairs(task: SFTTask, path: Path, limit: int | None = None) -> list[tuple[str, str]]:
    """``(prompt, completion)`` rows; multiple choice gives ``(query, delimiter + choices[gold])``."""
    from ckptsel.indicators.spec import read_jsonl

    rows = read_jsonl(path)[:limit] if limit else read_jsonl(path)
    out = []
    for i, row in enumerate(rows):
        if task.type == "multiple_choice":
            ch, gold = row.get("choices"), row.get("gold")
            if not (isinstance(row.get("query"), str) and isinstance(ch, list) and isinstance(gold, int)
                    and 0 <= gold < len(ch)):
                raise CkptselError(f"{path} row {i + 1}: multiple-choice rows need 'query', 'choices' and a 'gold' index")
            out.append((row["query"], task.target_delimiter + ch[gold]))
        else:
            if not (isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str)):
                raise CkptselError(f"{path} row {i + 1}: rows need string 'prompt' and 'completion'")
            out.append((row["prompt"], row["completion"]))
    if not out:
        raise CkptselError(f"{path} has no rows; add some or fix the task's path")
    return out


def encode_example(tokenizer, prompt: str, completion: str, max_length: int, *,
                   add_eos: bool = False) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)``: ``tok(prompt) + tok(completion)`` (completion without special tokens,
    plus EOS when ``add_eos``); labels are ``-100`` on prompt tokens, the ids on completion tokens.
    Too long: the prompt loses tokens from its left, then the completion from its right."""
    p = list(tokenizer(prompt)["input_ids"])
    c = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if add_eos and tokenizer.eos_token_id is not None:
        c.append(int(tokenizer.eos_token_id))
    c = c[:max_length - 1] if len(c) >= max_length else c
    p = p[max(0, len(p) - (max_length - len(c))):]
    return p + c, [-100] * len(p) + c


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int):
    """Right-pad to the longest: ``input_ids`` (pad_id), ``attention_mask`` (0), ``labels`` (-100)."""
    import torch

    T = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    for i, (x, y) in enumerate(examples):
        ids[i, :len(x)] = torch.tensor(x)
        labels[i, :len(y)] = torch.tensor(y)
        mask[i, :len(x)] = 1
    return ids, mask, labels


def set_seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# -- training ---------------------------------------------------------------------------------
def n_optimizer_steps(task: SFTTask, n_rows: int) -> int:
    if task.max_steps is not None:
        return task.max_steps
    return task.epochs * math.ceil(n_rows / (task.batch_size * task.gradient_accumulation_steps))


def prepare_model(model, task: SFTTask):
    """Wrap ``model`` in a LoRA adapter (``peft``), or leave all weights trainable for ``full``.
    Call :func:`set_seed` first: LoRA's ``A`` matrices are drawn from torch's global generator."""
    if task.method == "full":
        return model
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=int(task.lora["r"]), lora_alpha=float(task.lora["alpha"]),
                     lora_dropout=float(task.lora["dropout"]), target_modules=task.lora["target_modules"],
                     task_type="CAUSAL_LM")
    import warnings

    with warnings.catch_warnings():  # peft 0.21 calls a transformers 5 method that is renamed (FutureWarning)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, cfg)


def train(model, tokenizer, task: SFTTask, *, seed: int, progress: bool | None = None):
    """Fine-tune in place and return ``(model, losses)``; seeds before the adapter and the data order.

    The loop: for each optimizer step, ``gradient_accumulation_steps`` micro-batches of
    ``batch_size`` examples (the data in a fresh ``random.Random(seed)`` permutation per epoch),
    each loss divided by the accumulation count, then ``AdamW.step``. On CUDA the forward runs
    under bf16 autocast (fp32 master weights); on CPU in fp32. Same code either way.
    """
    import torch
    from tqdm.auto import tqdm

    set_seed(seed)
    if task.gradient_checkpointing:
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
        if task.method == "lora":
            model.enable_input_require_grads()  # frozen embeddings: let checkpointed blocks see a grad
    model = prepare_model(model, task)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    add_eos = task.type == "prompt_completion"
    examples = [encode_example(tokenizer, p, c, task.max_length, add_eos=add_eos)
                for p, c in read_pairs(task, task.train)]
    steps = n_optimizer_steps(task, len(examples))
    rng = random.Random(seed)
    order: list[int] = []

    def next_batch():
        nonlocal order
        if len(order) < task.batch_size:
            perm = list(range(len(examples)))
            rng.shuffle(perm)
            order += perm
        take, order = order[:task.batch_size], order[task.batch_size:]
        return [t.to(device) for t in collate([examples[i] for i in take], pad)]

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=task.learning_rate, weight_decay=task.weight_decay)
    amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    model.train()
    losses = []
    bar = tqdm(range(steps), desc=f"sft/{task.name} seed {seed}", file=sys.stderr, leave=False,
               disable=(not sys.stderr.isatty()) if progress is None else not progress)
    for _ in bar:
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(task.gradient_accumulation_steps):
            ids, mask, labels = next_batch()
            with amp:
                loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
            (loss / task.gradient_accumulation_steps).backward()
            total += loss.item() / task.gradient_accumulation_steps
        opt.step()
        losses.append(total)
        bar.set_postfix(loss=f"{total:.3f}")
    model.eval()
    return model, losses


# -- evaluation -------------------------------------------------------------------------------
def evaluate(model, tokenizer, task: SFTTask, *, batch_size: int = 16) -> dict[str, float]:
    """The task metric(s) on its eval split (see the module docstring for the formulas)."""
    import torch

    from ckptsel.indicators.lm import HFScoringLM

    model.eval()
    if task.type == "multiple_choice" and task.metric != "eval_loss":
        from ckptsel.indicators.kshot import run_task
        from ckptsel.indicators.spec import TaskSpec

        spec = TaskSpec(name=task.name, type="multiple_choice", test=task.eval, num_fewshot=0,
                        target_delimiter=task.target_delimiter, limit=task.eval_limit)
        with torch.no_grad():
            return run_task(HFScoringLM(model, tokenizer), spec, batch_size=batch_size).metrics
    pairs = read_pairs(task, task.eval, task.eval_limit)
    if task.metric == "exact_match":
        from ckptsel.indicators.batching import greedy_generate

        lm = HFScoringLM(model, tokenizer)
        gens = greedy_generate(lm, lm.tok_encode_many([p for p, _ in pairs]), until=["\n"],
                               max_new_tokens=task.max_gen_tokens, batch_size=batch_size)
        return {"exact_match": float(sum(g.strip() == c.strip() for g, (_, c) in zip(gens, pairs)) / len(pairs))}
    return {"eval_loss": completion_loss(model, tokenizer, task, pairs, batch_size=batch_size)}


def completion_loss(model, tokenizer, task: SFTTask, pairs, *, batch_size: int = 16) -> float:
    """Σ over completion tokens of −log p(token | prefix) / number of completion tokens."""
    import torch

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    examples = [encode_example(tokenizer, p, c, task.max_length, add_eos=task.type == "prompt_completion")
                for p, c in pairs]
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            ids, mask, labels = (t.to(device) for t in collate(examples[i:i + batch_size], pad))
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
            tgt = labels[:, 1:]
            lp = torch.log_softmax(logits[:, :-1], dim=-1)
            keep = tgt != -100
            nll -= float(lp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)[keep].sum())
            count += int(keep.sum())
    return nll / max(count, 1)


# -- the stage --------------------------------------------------------------------------------
@dataclass
class FinetuneReport:
    target: str
    spec_hash: str
    done: list[dict] = field(default_factory=list)     # {"id", "value", "std", "n", "seeds_trained"}
    skipped: list[str] = field(default_factory=list)   # checkpoint ids already labelled

    def describe(self) -> str:
        lines = [f"{d['id']:<40} {self.target} = {d['value']:.4f} ± {d['std']:.4f} (n={d['n']})" for d in self.done]
        lines.append(f"fine-tuned {len(self.done)} checkpoint(s), skipped {len(self.skipped)} already labelled; "
                     f"target {self.target}, spec {self.spec_hash}")
        return "\n".join(lines)


def adapter_dir(workspace: Path, ckpt: Checkpoint, task: SFTTask, seed: int) -> Path:
    """``<workspace>/adapters/<first 16 hex digits of the fingerprint>/<task hash>/seed<k>``."""
    return Path(workspace) / "adapters" / ckpt.fingerprint.split(":")[-1][:16] / task.hash / f"seed{seed}"


def finetune_one(ckpt: Checkpoint, task: SFTTask, seed: int, out_dir: Path, *, device=None,
                 progress: bool | None = None, allow_pickle: bool = False) -> dict[str, float]:
    """Train one seed, save the adapter (or full weights) to ``out_dir``, evaluate; returns metrics.
    A finished seed (``result.json`` present) is read back, not retrained."""
    from ckptsel.checkpoints import load_model

    result_file = out_dir / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())["metrics"]
    model, tokenizer = load_model(ckpt.path, dtype="float32", device=device, allow_pickle=allow_pickle)
    model, losses = train(model, tokenizer, task, seed=seed, progress=progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    metrics = evaluate(model, tokenizer, task)
    tmp = result_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"metrics": metrics, "seed": seed, "train_loss": losses, "checkpoint": ckpt.id}))
    tmp.replace(result_file)
    return metrics


def run_finetune(store: Store, ckpts: Sequence[Checkpoint], task: SFTTask, *, workspace: str | Path,
                 seeds: Sequence[int] = (0,), device=None, progress: bool | None = None,
                 executor=None, allow_pickle: bool = False) -> FinetuneReport:
    """Fine-tune every checkpoint with every seed; one label per checkpoint, written in one
    transaction after all its seeds finish. Checkpoints whose label exists are skipped.

    One job per (weights, seed), in checkpoint order; a checkpoint's label is written when its
    last seed finishes. ``executor``: ``None`` or a :class:`ckptsel.executor.LocalExecutor` runs
    the jobs here, one after another. A :class:`ckptsel.executor.RayExecutor` runs one Ray task
    per job with the task's ``num_cpus``/``num_gpus`` (``device`` default: ``cuda`` when it asks
    for GPUs, else ``cpu``); tasks write adapters under ``workspace`` (which must be on a
    filesystem the workers share) and return metrics; this process writes the labels."""
    if not seeds:
        raise CkptselError("no seeds given; pass --seeds 0 or --seeds 0,1,2")
    lhash = task.label_hash(seeds)
    report = FinetuneReport(task.target, lhash)
    todo = []
    for ckpt in ckpts:
        if store.has_label(ckpt.fingerprint, task.target, lhash):
            report.skipped.append(ckpt.id)
        else:
            todo.append(ckpt)
    executor = executor or LocalExecutor()
    remote = executor.name != "local"
    if remote and device is None:  # where the workers will run, not where this driver runs
        device = "cuda" if task.resources.num_gpus > 0 else "cpu"
    # One job per (weights, seed): ids sharing a fingerprint share adapters, as they do locally.
    firsts: dict[str, Checkpoint] = {}
    for c in todo:
        firsts.setdefault(c.fingerprint, c)
    jobs = [Job(f"{ckpt.id} seed {s}", finetune_one, (ckpt, task, s, adapter_dir(workspace, ckpt, task, s)),
                task.resources, {"device": device, "progress": False if remote else progress,
                                 "allow_pickle": allow_pickle})
            for ckpt in firsts.values() for s in dict.fromkeys(seeds)]  # a repeated seed is trained once
    values: dict[str, dict[int, float]] = {fp: {} for fp in firsts}
    for job, metrics in executor.run(jobs):
        fp, seed = job.args[0].fingerprint, job.args[2]
        values[fp][seed] = float(metrics[task.metric])
        if len(values[fp]) == len(set(seeds)):  # the last seed of these weights: their labels are complete
            for ckpt in (c for c in todo if c.fingerprint == fp):
                _store_label(store, ckpt, task, lhash, seeds, [values[fp][s] for s in seeds], report)
    return report


def _store_label(store: Store, ckpt: Checkpoint, task: SFTTask, lhash: str, seeds: Sequence[int], values: list[float],
                 report: FinetuneReport) -> None:
    import numpy as np

    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    seeds_text = ",".join(str(s) for s in seeds)
    with store.transaction():
        store.put_spec(lhash, kind="sft", name=f"{task.name} (seeds {seeds_text})", source=str(task.source or ""),
                       command=f"ckptsel finetune {{ckpt}} --task {task.source or task.name} --seeds {seeds_text}")
        store.put_label(ckpt.fingerprint, task.target, mean, spec_hash=lhash, std=std, n=len(values))
    report.done.append({"id": ckpt.id, "value": mean, "std": std, "n": len(values), "values": values})
