"""The pairwise predictor: pair features, antisymmetry, accuracy, determinism, persistence,
explanations, and the single-feature direction baseline."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptsel.errors import CkptselError
from ckptsel.predictor import (DirectionBaseline, FeatureSchema, PairwisePredictor, ordered_pairs,
                               pair_matrix, pair_scores)
from ckptsel.store import FeatureFrame
from frames import frame

SMALL = dict(n_estimators=30, min_child_samples=2, num_leaves=4)




def quality_table(n: int, seed: int):
    """A table whose true ordering is known: target = exp(q) of a hidden quality q."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0, 1, n)
    y = np.exp(2 * q)  # monotone in q
    f = frame([f"c{i}" for i in range(n)],
              {"strong": q + rng.normal(0, 0.01, n),
               "weak": q + rng.normal(0, 1.0, n),
               "noise": rng.normal(0, 1, n)},
              {"mix": rng.choice(["web", "code", "books"], n)})
    return f, y


# -- pair features ---------------------------------------------------------------------------

def test_pair_matrix_by_hand():
    # Two checkpoints, numeric p, r and one categorical (codes already encoded).
    num = np.array([[1.0, 2.0],
                    [3.0, 5.0]])
    cat = np.array([[0.0], [1.0]])
    got = pair_matrix(num, cat, np.array([0, 1]), np.array([1, 0]))
    expected = np.array([
        #  diff  prod  a    b  | diff  prod  a    b  | cat a, cat b
        [-2.0, 3.0, 1.0, 3.0, -3.0, 10.0, 2.0, 5.0, 0.0, 1.0],
        [2.0, 3.0, 3.0, 1.0, 3.0, 10.0, 5.0, 2.0, 1.0, 0.0],
    ])
    np.testing.assert_array_equal(got, expected)
    schema = FeatureSchema(numeric=["p", "r"], categorical={"arch": ["gpt", "llama"]})
    assert schema.pair_columns() == ["diff:p", "prod:p", "a:p", "b:p", "diff:r", "prod:r", "a:r", "b:r",
                                     "a:arch", "b:arch"]
    assert schema.base_feature_of_column() == ["p"] * 4 + ["r"] * 4 + ["arch"] * 2


def test_schema_encode_codes_and_unknown_category():
    schema = FeatureSchema(numeric=["p"], categorical={"arch": ["gpt", "llama"]})
    f = frame(["a", "b", "c", "d"], {"p": [1.0, np.nan, 3.0, 4.0]},
              {"arch": ["llama", "gpt", None, "mamba"]})
    num, cat = schema.encode(f)
    np.testing.assert_array_equal(num, [[1.0], [np.nan], [3.0], [4.0]])
    np.testing.assert_array_equal(cat, [[1.0], [0.0], [np.nan], [np.nan]])


def test_ordered_pairs():
    ia, ib = ordered_pairs(3)
    assert sorted(zip(ia.tolist(), ib.tolist())) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]


# -- antisymmetry ----------------------------------------------------------------------------

@st.composite
def small_tables(draw):
    n = draw(st.integers(4, 9))
    finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False)
    maybe_nan = st.one_of(finite, st.just(float("nan")))
    x1 = draw(st.lists(finite, min_size=n, max_size=n))
    x2 = draw(st.lists(maybe_nan, min_size=n, max_size=n))
    cats = draw(st.lists(st.sampled_from(["u", "v", "w", None]), min_size=n, max_size=n))
    y = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n).filter(lambda v: len(set(v)) >= 2))
    pairs = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), min_size=1, max_size=12))
    seed = draw(st.integers(0, 3))
    return frame([f"c{i}" for i in range(n)], {"x1": x1, "x2": x2}, {"k": cats}), np.array(y, float), \
        pairs, seed


@settings(max_examples=25, deadline=None)
@given(small_tables())
def test_antisymmetry_property(table):
    f, y, pairs, seed = table
    model = PairwisePredictor(n_estimators=10, min_child_samples=1, num_leaves=4, seed=seed).fit(f, y)
    ia = np.array([p[0] for p in pairs])
    ib = np.array([p[1] for p in pairs])
    A, B = f.take(ia), f.take(ib)
    p_ab = model.predict_proba(A, B)
    p_ba = model.predict_proba(B, A)
    assert np.all(np.abs(p_ab + p_ba - 1.0) <= 1e-12)
    assert np.all((p_ab >= 0) & (p_ab <= 1))
    assert np.all(np.abs(model.predict_proba(A, A) - 0.5) <= 1e-12)
    P = model.compare_all(f)
    assert np.all(np.abs(P + P.T - 1.0) <= 1e-12)
    assert np.all(np.diag(P) == 0.5)


# -- accuracy --------------------------------------------------------------------------------

def test_accuracy_on_known_ordering():
    f, y = quality_table(60, seed=1)
    train, test = np.arange(40), np.arange(40, 60)
    model = PairwisePredictor(seed=0).fit(f.take(train), y[train])
    ia, ib = [], []
    for i in test:  # all unordered held-out pairs (targets are distinct with probability 1)
        for j in test:
            if i < j:
                ia.append(i)
                ib.append(j)
    ia, ib = np.array(ia), np.array(ib)
    assert len(ia) == 20 * 19 // 2
    prob = model.predict_proba(f.take(ia), f.take(ib))
    truth = y[ia] > y[ib]
    accuracy = np.mean((prob > 0.5) == truth)
    assert accuracy >= 0.9, accuracy
    # compare_all agrees with predict_proba on the same pairs.
    P = model.compare_all(f.take(test))
    np.testing.assert_allclose(P[ia - 40, ib - 40], prob, atol=1e-6)


def test_fit_rejects_constant_or_mismatched_targets():
    f = frame(["a", "b", "c"], {"x": [1.0, 2.0, 3.0]})
    with pytest.raises(CkptselError):
        PairwisePredictor(**SMALL).fit(f, [1.0, 1.0, np.nan])
    with pytest.raises(CkptselError):
        PairwisePredictor(**SMALL).fit(f, [1.0, 2.0])


def test_fit_drops_unlabelled_checkpoints():
    f = frame(["a", "b", "c", "d"], {"x": [1.0, 2.0, 3.0, 4.0]})
    model = PairwisePredictor(**SMALL).fit(f, [1.0, np.nan, 3.0, 4.0])
    assert model.n_train_checkpoints_ == 3
    assert model.n_train_pairs_ == 6  # ordered pairs of 3 distinct targets


# -- determinism and persistence -------------------------------------------------------------

def test_same_seed_same_probabilities():
    f, y = quality_table(30, seed=2)
    ia, ib = ordered_pairs(30)
    A, B = f.take(ia), f.take(ib)
    p1 = PairwisePredictor(seed=7, n_estimators=50).fit(f, y).predict_proba(A, B)
    p2 = PairwisePredictor(seed=7, n_estimators=50).fit(f, y).predict_proba(A, B)
    np.testing.assert_array_equal(p1, p2)
    # Another seed is allowed to differ; it must still be a valid antisymmetric model.
    p3 = PairwisePredictor(seed=8, n_estimators=50).fit(f, y).predict_proba(A, B)
    assert p3.shape == p1.shape and np.all((p3 >= 0) & (p3 <= 1))


def test_save_load_round_trip(tmp_path):
    f, y = quality_table(30, seed=3)
    model = PairwisePredictor(seed=1, n_estimators=60).fit(f, y)
    out = model.save(tmp_path / "m", extra={"target": "acc"})
    loaded = PairwisePredictor.load(out)
    ia, ib = ordered_pairs(30)
    A, B = f.take(ia), f.take(ib)
    np.testing.assert_array_equal(loaded.predict_proba(A, B), model.predict_proba(A, B))
    np.testing.assert_array_equal(loaded.compare_all(f), model.compare_all(f))
    assert loaded.get_params() == model.get_params()
    assert loaded.meta_["target"] == "acc"
    assert (loaded.n_train_checkpoints_, loaded.n_train_pairs_) == (30, 30 * 29)


def test_save_load_keeps_categorical_column_order(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    zmix = rng.choice(["p", "q"], n)
    arch = rng.choice(["big", "mid", "small"], n)
    y = (zmix == "q") * 2.0 + (arch == "big") * 1.0 + rng.normal(0, 0.1, n)
    f = frame([f"c{i}" for i in range(n)], {"x": rng.normal(size=n)}, {"zmix": zmix, "arch": arch})
    model = PairwisePredictor(seed=0, n_estimators=60).fit(f, y)
    loaded = PairwisePredictor.load(model.save(tmp_path / "m"))
    ia, ib = ordered_pairs(n)
    np.testing.assert_array_equal(loaded.predict_proba(f.take(ia), f.take(ib)),
                                  model.predict_proba(f.take(ia), f.take(ib)))


def test_loaded_model_refuses_missing_feature(tmp_path):
    f, y = quality_table(20, seed=4)
    loaded = PairwisePredictor.load(PairwisePredictor(**SMALL).fit(f, y).save(tmp_path / "m"))
    keep = [j for j, name in enumerate(f.numeric_names) if name != "weak"]
    short = FeatureFrame(f.ids, [f.numeric_names[j] for j in keep], f.numeric[:, keep],
                         f.categorical_names, f.categorical)
    with pytest.raises(CkptselError) as err:
        loaded.predict_proba(short.take([0]), short.take([1]))
    assert "weak" in str(err.value) and "\n" not in str(err.value)
    # A feature of the wrong kind is refused as well, naming it.
    as_cat = FeatureFrame(f.ids, [n for n in f.numeric_names if n != "strong"],
                          f.numeric[:, [j for j, n in enumerate(f.numeric_names) if n != "strong"]],
                          f.categorical_names + ["strong"],
                          np.hstack([f.categorical, f.numeric[:, [0]].astype(str).astype(object)]))
    with pytest.raises(CkptselError) as err:
        loaded.compare_all(as_cat)
    assert "strong" in str(err.value)


def test_load_refuses_empty_directory(tmp_path):
    with pytest.raises(CkptselError) as err:
        PairwisePredictor.load(tmp_path)
    assert str(tmp_path) in str(err.value)


# -- explanations ----------------------------------------------------------------------------

def test_explain_names_the_informative_feature():
    rng = np.random.default_rng(5)
    n = 40
    signal = rng.uniform(0, 1, n)
    f = frame([f"c{i}" for i in range(n)],
              {"noise1": rng.normal(size=n), "signal": signal, "noise2": rng.normal(size=n)},
              {"mix": rng.choice(["a", "b"], n)})
    y = 10 * signal  # only "signal" matters
    model = PairwisePredictor(seed=0, n_estimators=80).fit(f, y)
    hi, lo = int(np.argmax(signal)), int(np.argmin(signal))
    A, B = f.take([hi, lo]), f.take([lo, hi])
    for row, sign in ((0, +1), (1, -1)):  # A better, then A worse
        reasons = model.explain(A, B, row=row)
        assert {r["feature"] for r in reasons} == {"noise1", "signal", "noise2", "mix"}
        top = reasons[0]
        assert top["feature"] == "signal"
        assert np.sign(top["contribution"]) == sign
        assert top["a"] == pytest.approx(A.column("signal")[row])
        assert top["b"] == pytest.approx(B.column("signal")[row])
        p = model.predict_proba(A.take([row]), B.take([row]))[0]
        assert np.sign(p - 0.5) == np.sign(sum(r["contribution"] for r in reasons)) == sign
@pytest.mark.parametrize("row", [0, 1])
def test_explain_adds_up_to_each_part(row):
    """Trees alone: the contributions are LightGBM's SHAP values, which add up to half the
    difference of the raw scores f(A,B) - f(B,A). Ridge alone: P = sigmoid(k (s_A - s_B)), so
    the contributions add up to the log-odds of P."""
    rng = np.random.default_rng(6)
    n = 40
    f = frame([f"c{i}" for i in range(n)], {"u": rng.normal(size=n), "v": rng.normal(size=n)},
              {"mix": rng.choice(["a", "b", "c"], n)})
    y = f.column("u") + 0.5 * f.column("v") + (f.column("mix") == "a") + rng.normal(0, 0.3, n)
    A, B = f.take([0, 1]), f.take([2, 3])
    trees = PairwisePredictor(seed=0, ridge_weight=0.0, n_estimators=60).fit(f, y)
    total = sum(r["contribution"] for r in trees.explain(A, B, row=row))
    qa, ca, _ = trees._transform(A.take([row]))
    qb, cb, _ = trees._transform(B.take([row]))
    q, cat = np.vstack([qa, qb]), np.vstack([ca, cb])
    raw = trees.booster_.predict(pair_matrix(q, cat, np.array([0, 1]), np.array([1, 0])), raw_score=True)
    assert total == pytest.approx(0.5 * (raw[0] - raw[1]), abs=1e-9)
    ridge = PairwisePredictor(seed=0, ridge_weight=1.0, n_estimators=5).fit(f, y)
    total = sum(r["contribution"] for r in ridge.explain(A, B, row=row))
    p = ridge.predict_proba(A.take([row]), B.take([row]))[0]
    assert total == pytest.approx(np.log(p / (1 - p)), abs=1e-9)


def test_ridge_parts_by_closed_form():
    """mid_rank_quantile, ridge_fit and logistic_scale against hand values and numpy peers."""
    from ckptsel.predictor import logistic_scale, mid_rank_quantile, ridge_fit

    ref = np.array([1.0, 2.0, 2.0, 4.0])
    # below/at: 0 -> 0; 1 -> (0+1)/8; 2 -> (1+3)/8; 3 -> (3+3)/8; 5 -> 1
    np.testing.assert_allclose(mid_rank_quantile(ref, np.array([0.0, 1.0, 2.0, 3.0, 5.0])),
                               [0.0, 1 / 8, 4 / 8, 6 / 8, 1.0])
    rng = np.random.default_rng(0)
    X, t = rng.normal(size=(30, 3)), rng.normal(size=30)
    coef, b = ridge_fit(X, t, 2.0)
    # Peer: augmented least squares with sqrt(alpha) I rows and an unpenalised intercept column.
    aug_X = np.vstack([np.hstack([X, np.ones((30, 1))]), np.hstack([np.sqrt(2.0) * np.eye(3), np.zeros((3, 1))])])
    sol = np.linalg.lstsq(aug_X, np.r_[t, np.zeros(3)], rcond=None)[0]
    np.testing.assert_allclose(np.r_[coef, b], sol, atol=1e-10)
    # logistic_scale: the gradient of the penalised log-loss vanishes at its answer.
    gaps = rng.normal(size=200)
    labels = (gaps + rng.normal(0, 0.5, 200) > 0).astype(float)
    k = logistic_scale(gaps, labels)
    sd = gaps.std() + 1e-12
    w, x, sign = k * sd, gaps / sd, 2 * labels - 1
    grad = w - np.sum(sign * x / (1 + np.exp(sign * w * x)))
    assert abs(grad) < 1e-8 and k > 0


# -- direction baseline ----------------------------------------------------------------------

def test_pair_scores_by_hand():
    a = np.array([1.0, 2.0, 3.0, np.nan, 1.0, np.nan])
    b = np.array([2.0, 2.0, 1.0, 0.0, np.nan, np.nan])
    np.testing.assert_array_equal(pair_scores(a, b, +1), [0.0, 0.5, 1.0, 0.5, 0.5, 0.5])
    np.testing.assert_array_equal(pair_scores(a, b, -1), [1.0, 0.5, 0.0, 0.5, 0.5, 0.5])


def test_direction_baseline_picks_the_sign():
    loss = np.array([3.0, 2.0, 2.0, 1.0, 0.5])
    acc = np.array([0.1, 0.2, 0.3, 0.4, 0.5])  # lower loss is better
    base = DirectionBaseline("loss").fit(loss, acc)
    assert base.sign_ == -1
    np.testing.assert_array_equal(base.predict_proba(np.array([1.0, 2.0, 1.0]), np.array([2.0, 1.0, 1.0])),
                                  [1.0, 0.0, 0.5])
    assert DirectionBaseline("acc_proxy").fit(-loss, acc).sign_ == +1
    # Majority, not unanimity: 5 of 6 unordered pairs say higher is better.
    x = np.array([1.0, 2.0, 4.0, 3.0])
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert DirectionBaseline("x").fit(x, y).sign_ == +1
    # No information at all (every value tied): accuracy 1/2 either way; "higher" is kept.
    assert DirectionBaseline("c").fit(np.ones(4), y).sign_ == +1
