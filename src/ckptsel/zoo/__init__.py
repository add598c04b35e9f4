"""The micro zoo: tiny Llama-style models pretrained here on CPU, with their corpus and tasks.

- ``corpus.py``: the text, three domains split into pretrain and held-out documents (``data/zoo``);
- ``tasks.py``: fine-tuning and indicator tasks built from the held-out text;
- ``pretrain.py``: the objectives (causal LM, prefix LM, span corruption, mixtures), one
  variant's training (:func:`pretrain_variant`) and the whole zoo (:func:`build_zoo`);
- ``presets.py``: the ``micro`` and ``paper-mini`` grids of variants, and custom YAML presets.

``from ckptsel.zoo import build_zoo`` imports no torch: the heavy imports happen inside training.
"""

from ckptsel.zoo.presets import Preset, get_preset
from ckptsel.zoo.pretrain import Variant, ZooResult, build_zoo, pretrain_variant

__all__ = ["Preset", "Variant", "ZooResult", "build_zoo", "get_preset", "pretrain_variant"]
