"""The evaluation protocol: split parsing, no leakage, hand-worked baselines, result shape."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from ckptsel.errors import CkptselError
from ckptsel.evaluation import Split, correctness, drop_empty_features, evaluate, splits
from ckptsel.predictor import PairwisePredictor
from ckptsel.store import FeatureFrame
from frames import frame




class Recording:
    """A real PairwisePredictor that records the checkpoint ids it is fitted and queried on."""

    def __init__(self, seed: int, log: list):
        self.inner = PairwisePredictor(n_estimators=5, min_child_samples=2, seed=seed)
        self.log = log

    def fit(self, X, y):
        self.log.append({"fit": list(X.ids), "pairs": []})
        self.inner.fit(X, y)
        return self

    def predict_proba(self, A, B):
        self.log[-1]["pairs"] += list(zip(A.ids, B.ids))
        return self.inner.predict_proba(A, B)


RESULT_KEYS = {"target", "split", "repeats", "pairs_per_repeat", "predictor", "baselines",
               "accuracy_by_gap_quartile"}


# -- Split -----------------------------------------------------------------------------------

def test_split_parse_accepts():
    assert Split.parse("random:0.6") == Split("random", 0.6)
    assert Split.parse("random:0.25") == Split("random", 0.25)
    assert Split.parse("random") == Split("random", 0.6)
    assert Split.parse("group:run") == Split("group", column="run")
    assert Split.parse("group:data_mix") == Split("group", column="data_mix")
    for text in ("random:0.6", "random:0.25", "group:run"):
        assert str(Split.parse(text)) == text


@pytest.mark.parametrize("text", ["random:0", "random:1", "random:1.5", "random:-0.2", "random:x",
                                  "random:nan", "group", "group:", "kfold:5", "", "Random:0.6"])
def test_split_parse_rejects(text):
    with pytest.raises(CkptselError) as err:
        Split.parse(text)
    assert repr(text) in str(err.value) and "\n" not in str(err.value)


def test_random_split_too_few_and_group_errors():
    with pytest.raises(CkptselError):
        splits(3, Split("random", 0.6), 1, 0)  # 2 train, 1 test
    with pytest.raises(CkptselError):
        splits(4, Split("group", column="run"), 1, 0, groups=["a", "a", None, "b"])
    with pytest.raises(CkptselError):
        splits(4, Split("group", column="run"), 1, 0, groups=["a"] * 4)
    with pytest.raises(CkptselError):
        splits(4, Split("group", column="run"), 1, 0, groups=None)


def test_correctness_counts_half_for_exact_ties():
    prob = np.array([0.9, 0.9, 0.1, 0.1, 0.5, 0.5])
    truth = np.array([True, False, True, False, True, False])
    np.testing.assert_array_equal(correctness(prob, truth), [1, 0, 0, 1, 0.5, 0.5])


def test_drop_empty_features():
    f = frame(["a", "b"], {"x": [1.0, np.nan], "gone": [np.nan, np.nan]},
              {"k": ["u", None], "none": [None, None]})
    kept = drop_empty_features(f)
    assert kept.numeric_names == ["x"] and kept.categorical_names == ["k"]
    np.testing.assert_array_equal(kept.numeric, [[1.0], [np.nan]])


# -- leakage ---------------------------------------------------------------------------------

def test_random_split_has_no_leakage():
    rng = np.random.default_rng(0)
    n, repeats = 15, 6
    ids = [f"c{i}" for i in range(n)]
    y = np.array([1, 2, 2, 3, 4, 4, 4, 5, 6, 7, 8, 8, 9, 10, 11], dtype=float)  # with ties
    f = frame(ids, {"x": y + rng.normal(0, 0.5, n), "z": rng.normal(size=n)},
              {"k": rng.choice(["a", "b"], n)})
    log: list = []
    result = evaluate(f, y, target="t", split="random:0.6", repeats=repeats, seed=3,
                      make_predictor=lambda s: Recording(s, log))
    value = dict(zip(ids, y))
    n_train = round(0.6 * n)
    assert len(log) == repeats == result["repeats"]
    counts = []
    for call in log:
        train = set(call["fit"])
        test = set(ids) - train
        assert len(train) == n_train == len(call["fit"]) and len(test) == n - n_train
        seen = {c for pair in call["pairs"] for c in pair}
        assert not seen & train  # no test checkpoint was ever trained on (and vice versa)
        expected = {frozenset(p) for p in combinations(sorted(test), 2) if value[p[0]] != value[p[1]]}
        got = [frozenset(p) for p in call["pairs"]]
        assert len(got) == len(set(got))  # each unordered pair once
        assert set(got) == expected
        counts.append(len(expected))
    assert len({tuple(sorted(c["fit"])) for c in log}) > 1  # repeats draw different splits
    assert result["pairs_per_repeat"] == pytest.approx(np.mean(counts))
    assert sum(q["pairs"] for q in result["accuracy_by_gap_quartile"]) == sum(counts)


def test_same_seed_same_splits_and_result():
    rng = np.random.default_rng(1)
    n = 12
    y = rng.normal(size=n)
    f = frame([f"c{i}" for i in range(n)], {"x": y + rng.normal(0, 0.3, n)})
    make = lambda s: PairwisePredictor(n_estimators=5, min_child_samples=2, seed=s)  # noqa: E731
    r1 = evaluate(f, y, target="t", repeats=3, seed=5, make_predictor=make)
    r2 = evaluate(f, y, target="t", repeats=3, seed=5, make_predictor=make)
    assert r1 == r2


def test_group_split_leaves_each_group_out_once():
    groups = ["r1"] * 4 + ["r2"] * 3 + ["r3"] * 5
    n = len(groups)
    ids = [f"c{i}" for i in range(n)]
    y = np.arange(n, dtype=float)[::-1] * 1.5
    f = frame(ids, {"x": -y}, {"run": groups})
    log: list = []
    result = evaluate(f, y, target="t", split="group:run", repeats=99, groups=groups,
                      make_predictor=lambda s: Recording(s, log))
    assert result["split"] == "group:run"
    assert result["repeats"] == len(log) == 3  # one per group, whatever `repeats` says
    members = {g: {i for i, gg in zip(ids, groups) if gg == g} for g in set(groups)}
    left_out = []
    for call in log:
        test = {c for pair in call["pairs"] for c in pair}
        assert set(call["fit"]) == set(ids) - test
        (group,) = [g for g, m in members.items() if m == test]
        left_out.append(group)
        assert len(call["pairs"]) == len(test) * (len(test) - 1) // 2
    assert sorted(left_out) == ["r1", "r2", "r3"]
    assert result["pairs_per_repeat"] == pytest.approx((6 + 3 + 10) / 3)
    # "lower x is better" is learned on every fold: the baseline is always right.
    assert result["baselines"]["x"] == {"accuracy_mean": 1.0, "accuracy_std": 0.0}


# -- hand-worked numbers ---------------------------------------------------------------------

def test_baselines_by_hand_on_a_group_split():
    # c1 c2 | c3 c4 c5 ; folds (names sorted): leave out A (train c3..c5), leave out B (train c1, c2).
    ids = ["c1", "c2", "c3", "c4", "c5"]
    groups = ["A", "A", "B", "B", "B"]
    y = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    x = np.array([1.0, 2.0, 30.0, 20.0, 10.0])
    z = np.array([5.0, 5.0, 1.0, 2.0, 2.0])
    f = frame(ids, {"x": x, "z": z})
    # x, fold A: on c3..c5 x falls as y rises -> "lower is better"; test pair (c1, c2) has
    #   x 1 < 2 so c1 is called better, but y1 < y2: wrong (0).
    # x, fold B: on c1, c2 "higher is better"; pairs (c3,c4), (c3,c5), (c4,c5) all have x falling
    #   while y rises: all wrong (0).                         -> x: mean 0, std 0
    # z, fold A: on c3..c5, higher is right for (c3,c4), (c3,c5), tie on (c4,c5): 2.5/3 >= 1/2
    #   -> "higher"; test pair (c1, c2) is a tie: 1/2.
    # z, fold B: c1, c2 tie -> 1/2 either way -> "higher" kept; (c3,c4) right, (c3,c5) right,
    #   (c4,c5) tie: (1 + 1 + 0.5) / 3 = 5/6.                 -> z: mean (1/2 + 5/6)/2 = 2/3,
    #   population std |5/6 - 1/2| / 2 = 1/6.
    # The predictor is made unable to split (min_child_samples above the pair count): it predicts
    # P = 1/2 exactly on every pair, which scores 1/2 per pair.
    make = lambda s: PairwisePredictor(n_estimators=3, min_child_samples=1000, seed=s)  # noqa: E731
    result = evaluate(f, y, target="acc", split="group:g", groups=groups, make_predictor=make)
    assert RESULT_KEYS <= set(result)
    assert result["target"] == "acc" and result["split"] == "group:g"
    assert result["repeats"] == 2 and result["pairs_per_repeat"] == 2.0  # (1 + 3) / 2
    assert result["baselines"]["x"]["accuracy_mean"] == pytest.approx(0.0)
    assert result["baselines"]["x"]["accuracy_std"] == pytest.approx(0.0)
    assert result["baselines"]["z"]["accuracy_mean"] == pytest.approx(2 / 3)
    assert result["baselines"]["z"]["accuracy_std"] == pytest.approx(1 / 6)
    assert result["predictor"]["accuracy_mean"] == pytest.approx(0.5)
    assert result["predictor"]["accuracy_std"] == pytest.approx(0.0)
    # Gaps |dy| over all 4 test pairs: 1 (c1,c2), 1 (c3,c4), 2 (c3,c5), 1 (c4,c5).
    quartiles = result["accuracy_by_gap_quartile"]
    assert [q["quartile"] for q in quartiles] == [1, 2, 3, 4]
    assert sum(q["pairs"] for q in quartiles) == 4
    assert min(q["gap_min"] for q in quartiles if q["pairs"]) == 1.0
    assert max(q["gap_max"] for q in quartiles if q["pairs"]) == 2.0
    # Fixed rules ignore the training side. "x lower is better": fold A (c1, c2): x1 < x2 calls c1,
    # y says c2: 0. Fold B: x falls as y rises on all 3 pairs: right, 1. -> mean 1/2, std 1/2.
    # "z higher is better": fold A tie 1/2; fold B 5/6 as above.
    fixed = evaluate(f, y, target="acc", split="group:g", groups=groups, make_predictor=make,
                     fixed_rules={"x": -1, "z": +1, "absent": -1})
    assert set(fixed["fixed_rules"]) == {"x (lower is better)", "z (higher is better)"}
    assert fixed["fixed_rules"]["x (lower is better)"]["accuracy_mean"] == pytest.approx(0.5)
    assert fixed["fixed_rules"]["x (lower is better)"]["accuracy_std"] == pytest.approx(0.5)
    assert fixed["fixed_rules"]["z (higher is better)"]["accuracy_mean"] == pytest.approx(2 / 3)
    assert fixed["baselines"] == result["baselines"]


def test_result_shape_and_gap_quartiles():
    rng = np.random.default_rng(2)
    n, repeats = 20, 4
    q = rng.uniform(size=n)
    y = np.exp(q) + np.arange(n) * 1e-6  # distinct targets: every test pair counts
    f = frame([f"c{i}" for i in range(n)], {"good": q + rng.normal(0, 0.05, n), "bad": rng.normal(size=n)},
              {"mix": rng.choice(["a", "b", "c"], n)})
    make = lambda s: PairwisePredictor(n_estimators=20, min_child_samples=5, seed=s)  # noqa: E731
    result = evaluate(f, y, target="acc", split=Split("random", 0.6), repeats=repeats, seed=0,
                      make_predictor=make)
    assert RESULT_KEYS <= set(result)
    n_test = n - round(0.6 * n)
    pairs = n_test * (n_test - 1) // 2
    assert result["repeats"] == repeats and result["pairs_per_repeat"] == pairs
    assert result["split"] == "random:0.6" and result["target"] == "acc"
    assert set(result["predictor"]) == {"accuracy_mean", "accuracy_std"}
    assert set(result["baselines"]) == {"good", "bad"}  # numeric features only
    for v in result["baselines"].values():
        assert set(v) == {"accuracy_mean", "accuracy_std"} and 0 <= v["accuracy_mean"] <= 1
    assert result["baselines"]["good"]["accuracy_mean"] > 0.8
    quartiles = result["accuracy_by_gap_quartile"]
    assert len(quartiles) == 4 and [x["quartile"] for x in quartiles] == [1, 2, 3, 4]
    assert sum(x["pairs"] for x in quartiles) == repeats * pairs
    # Quartile buckets cover increasing gap ranges.
    filled = [x for x in quartiles if x["pairs"]]
    assert all(a["gap_max"] <= b["gap_min"] for a, b in zip(filled, filled[1:]))
    assert all(0 <= x["accuracy"] <= 1 for x in filled)


def test_no_usable_split_is_an_error():
    f = frame(["a", "b", "c", "d"], {"x": [1.0, 2.0, 3.0, 4.0]})
    y = [1.0, 1.0, 2.0, 2.0]
    # Leaving out each group leaves only tied pairs in the test set.
    with pytest.raises(CkptselError) as err:
        evaluate(f, y, target="t", split="group:g", groups=["g1", "g1", "g2", "g2"],
                 make_predictor=lambda s: PairwisePredictor(n_estimators=3, seed=s))
    assert "'t'" in str(err.value)


def test_group_fraction_split_keeps_groups_whole():
    groups = ["r1"] * 3 + ["r2"] * 3 + ["r3"] * 3 + ["r4"] * 3 + ["r5"] * 3
    split = Split.parse("group:run:0.6")
    assert split == Split("group", column="run", group_fraction=0.6) and str(split) == "group:run:0.6"
    folds = splits(15, split, 10, 0, groups=groups)
    assert len(folds) == 10
    for train, test in folds:
        train_g = {groups[i] for i in train}
        test_g = {groups[i] for i in test}
        assert len(train_g) == 3 and len(test_g) == 2 and not train_g & test_g  # round(0.6 * 5) = 3
        assert sorted(np.concatenate([train, test]).tolist()) == list(range(15))
    with pytest.raises(CkptselError, match="too few"):
        splits(4, Split.parse("group:run:0.9"), 1, 0, groups=["a", "a", "b", "b"])
    for bad in ("group:run:0", "group:run:1.5", "group::0.5", "group:run:x"):
        with pytest.raises(CkptselError):
            Split.parse(bad)
