"""Label orientation: for loss-like targets a lower value is the better fine-tuning outcome."""

from __future__ import annotations

import numpy as np
import pytest

from ckptsel.store import Checkpoint
from ckptsel.training import labelled_table, lower_is_better


@pytest.mark.parametrize("target,lower", [
    ("sft/zoo_cloze/eval_loss", True), ("ft_loss", True), ("sft/x/perplexity", True), ("x/ppl", True),
    ("sft/zoo_next/acc", False), ("sft/loss_task/acc", False), ("ft_task1", False),
])
def test_lower_is_better_reads_the_last_part(target, lower):
    assert lower_is_better(target) is lower


def test_loss_targets_are_negated_so_higher_y_is_better(store):
    losses = {"a": 2.5, "b": 1.0, "c": 3.0}
    with store.transaction():
        for i, (cid, loss) in enumerate(losses.items()):
            store.upsert_checkpoint(Checkpoint(cid, None, "r", i, f"fp{cid}"))
            store.put_features(f"fp{cid}", {"f": float(i)}, spec_hash="s")
            store.put_label(f"fp{cid}", "sft/t/eval_loss", loss, spec_hash="h")
            store.put_label(f"fp{cid}", "sft/t/acc", 1.0 / loss, spec_hash="h")
    lt = labelled_table(store, "sft/t/eval_loss")
    got = dict(zip(lt.frame.ids, lt.y))
    assert got == {"a": -2.5, "b": -1.0, "c": -3.0}
    # "b" (lowest loss) is the best under both targets
    assert max(got, key=got.get) == "b"
    acc = labelled_table(store, "sft/t/acc")
    assert max(zip(acc.y, acc.frame.ids))[1] == "b"
    np.testing.assert_allclose(sorted(acc.y), sorted(1.0 / np.array(list(losses.values()))))
