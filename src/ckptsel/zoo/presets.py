"""Zoo presets: named grids of pretraining variants (see ``pretrain.py`` for what a variant is).

- ``micro``: 4 variants x 3 checkpoints, one per objective family (causal LM, prefix LM, span
  corruption, a causal+span mixture), each with its own learning rate, domain mix and seed.
  The demo's zoo: about a minute (53 s of CPU measured, one thread).
- ``paper-mini``: the grid of Zeng et al. (arXiv 2504.12491) at micro scale: 4 objectives
  (clm, prefix_lm, span, clm+span) x 2 learning rates x 3 domain mixes (uniform, python-heavy,
  licenses-heavy) at seed 0, plus the 4 objectives again at seed 1 (one lr, uniform mix) to
  measure seed noise: 28 variants x 5 checkpoints (600 steps each, about 26 s of one core per
  variant: 12-13 minutes in a row, about half with two Ray workers).

Domain mixes: ``uniform`` weighs every domain of ``ckptsel.zoo.corpus.DOMAINS`` equally;
``<domain>-heavy`` gives that domain 0.6 and splits 0.4 among the others.

A custom preset is a YAML file (``ckptsel zoo build --preset my.yaml``)::

    name: tiny                       # the directory under <workspace>/zoo/
    vocab_size: 512                  # the shared tokenizer's (default 1024)
    defaults: {hidden_size: 32, seq_len: 32, batch_size: 4, warmup_steps: 2}
    variants:
      - {name: a, objectives: {clm: 1}, lr: 0.003, mix: uniform, seed: 0, save_steps: [4, 8]}
      - {name: b, objectives: {clm: 0.5, span: 0.5}, lr: 0.001, mix: {python: 3, licenses: 1},
         seed: 1, save_steps: [4, 8]}

``objectives`` is a mapping of objective to weight or one objective's name; ``mix`` a mapping
of domain to weight or a mix name. Any :class:`~ckptsel.zoo.pretrain.Variant` field can be
set per variant or in ``defaults``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path

from ckptsel.errors import CkptselError
from ckptsel.zoo.pretrain import Variant


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    variants: tuple[Variant, ...]
    vocab_size: int = 1024

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", self.name) or ".." in self.name:
            raise CkptselError(f"zoo preset name {self.name!r} is not allowed; use letters, digits, '.', '_' "
                               "and '-' (it becomes the directory <workspace>/zoo/<name>/)")
        names = [v.name for v in self.variants]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise CkptselError(f"zoo preset {self.name!r}: variant name {dup[0]!r} is used twice")
        if not self.variants:
            raise CkptselError(f"zoo preset {self.name!r} has no variants")

    @property
    def n_checkpoints(self) -> int:
        return sum(len(v.save_steps) for v in self.variants)


def mix_weights(mix: str | dict) -> dict[str, float]:
    """``uniform``, ``<domain>-heavy`` (0.6 on it, 0.4 split among the others), or a mapping as is."""
    from ckptsel.zoo.corpus import DOMAINS

    if isinstance(mix, dict):
        return mix
    if mix == "uniform":
        return {d: 1.0 for d in DOMAINS}
    if isinstance(mix, str) and mix.endswith("-heavy") and mix[:-6] in DOMAINS:
        heavy = mix[:-6]
        return {d: 0.6 if d == heavy else 0.4 / (len(DOMAINS) - 1) for d in DOMAINS}
    names = ["uniform"] + [f"{d}-heavy" for d in DOMAINS]
    raise CkptselError(f"unknown zoo domain mix {mix!r}; use one of {', '.join(names)} or a mapping domain: weight")


def _lr_name(lr: float) -> str:
    mantissa, exp = f"{lr:.0e}".split("e")
    return f"{mantissa}e{int(exp)}"


def micro() -> Preset:
    common = dict(save_steps=(100, 200, 300))
    variants = (
        Variant("clm", {"clm": 1}, 4e-3, mix_weights("uniform"), seed=0, **common),
        Variant("prefix", {"prefix_lm": 1}, 2e-3, mix_weights("python-heavy"), seed=1, **common),
        Variant("span", {"span": 1}, 4e-3, mix_weights("licenses-heavy"), seed=2, **common),
        Variant("mix", {"clm": 0.5, "span": 0.5}, 1e-3, mix_weights("copyright-heavy"), seed=3, **common),
    )
    return Preset("micro", "4 variants (clm, prefix LM, span, clm+span) x 3 checkpoints; about a minute", variants)


PAPER_OBJECTIVES = {"clm": {"clm": 1}, "prefix": {"prefix_lm": 1}, "span": {"span": 1},
                    "mix": {"clm": 0.5, "span": 0.5}}


def paper_mini() -> Preset:
    from ckptsel.zoo.corpus import DOMAINS

    steps = (120, 240, 360, 480, 600)
    grid = [(obj, lr, mix, 0) for obj in PAPER_OBJECTIVES for lr in (1e-3, 4e-3)
            for mix in ("uniform", f"{DOMAINS[0]}-heavy", f"{DOMAINS[1]}-heavy")]
    grid += [(obj, 4e-3, "uniform", 1) for obj in PAPER_OBJECTIVES]
    variants = tuple(Variant(f"{obj}-lr{_lr_name(lr)}-{mix}-s{seed}", PAPER_OBJECTIVES[obj], lr, mix_weights(mix),
                             seed=seed, save_steps=steps) for obj, lr, mix, seed in grid)
    return Preset("paper-mini", f"{len(variants)} variants (4 objectives x 2 lr x 3 mixes, + 4 at seed 1) "
                                f"x {len(steps)} checkpoints; about 13 minutes", variants)


BUILTIN = {"micro": micro, "paper-mini": paper_mini}


def get_preset(name: str | Path) -> Preset:
    """A built-in preset by name, or a custom one from a YAML file (see the module docstring)."""
    if str(name) in BUILTIN:
        return BUILTIN[str(name)]()
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return load_preset(path)
    raise CkptselError(f"unknown zoo preset {str(name)!r}; use {', '.join(BUILTIN)} or a preset YAML file "
                       "(see `ckptsel zoo list`)")


def load_preset(path: str | Path) -> Preset:
    from ckptsel.indicators.spec import check_keys, read_yaml_mapping

    path = Path(path)
    data = read_yaml_mapping(path, "zoo preset", "pass a built-in preset name or an existing YAML file")
    where = f"zoo preset {path.name}"
    check_keys(data, {"name", "description", "vocab_size", "defaults", "variants"}, where)
    allowed = {f.name for f in fields(Variant)}
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise CkptselError(f"{where}: defaults must be a mapping of variant fields")
    check_keys(defaults, allowed - {"name"}, f"{where}: defaults")
    entries = data.get("variants")
    if not isinstance(entries, list) or not entries:
        raise CkptselError(f"{where}: variants must be a non-empty list of mappings")
    variants = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise CkptselError(f"{where}: variant {i} must be a mapping")
        check_keys(entry, allowed, f"{where}: variant {i}")
        v = {**defaults, **entry}
        missing = sorted({"name", "lr", "save_steps"} - set(v))
        if missing:
            raise CkptselError(f"{where}: variant {i} needs {missing[0]!r}")
        objectives = v.get("objectives", "clm")
        v["objectives"] = {objectives: 1.0} if isinstance(objectives, str) else objectives
        v["mix"] = mix_weights(v.get("mix", "uniform"))
        v.setdefault("seed", 0)
        try:
            v["lr"] = float(v["lr"])
            v["save_steps"] = tuple(v["save_steps"])
            variants.append(Variant(**v))
        except (TypeError, ValueError) as e:
            raise CkptselError(f"{where}: variant {i} ({v.get('name')!r}) is malformed: {e}") from e
    name = str(data.get("name") or path.stem)
    if name in BUILTIN:
        raise CkptselError(f"{where}: name {name!r} is a built-in preset's; choose another name")
    return Preset(name, str(data.get("description", f"custom preset from {path}")), tuple(variants),
                  int(data.get("vocab_size", 1024)))
