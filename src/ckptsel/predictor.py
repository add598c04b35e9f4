"""The pairwise predictor: P(checkpoint A fine-tunes better than checkpoint B).

"Learning to compare" as in Zeng et al., *Can Pre-training Indicators Reliably Predict
Fine-tuning Outcomes of LLMs?* (arXiv 2504.12491), Sec. 4: for every numeric
pretraining-side feature p the pair features are ``[p_A - p_B, p_A * p_B, p_A, p_B]``;
categorical metadata (objective, data mix, ...) enters as a LightGBM categorical feature
of each side. Here p is the feature's quantile among the training checkpoints, the
classifier is trained on both orders of every pair and antisymmetrised, and it is blended
with a heavily shrunk pointwise ridge (see ``PairwisePredictor``), so that

    P(A > B) + P(B > A) = 1 exactly.

The estimator follows scikit-learn's contract: hyperparameters in ``__init__``, learned
state in attributes ending in ``_``, ``fit`` returns ``self``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ckptsel.errors import CkptselError
from ckptsel.store import FeatureFrame

MODEL_FILE = "model.txt"
SCHEMA_FILE = "schema.json"
RECIPE = "zeng2025-pairs/quantile-ridge-blend/v1"
PAIR_BLOCK = 250_000  # pairs per LightGBM batch in compare_all (about 60 MB of features at 30 columns)


@dataclass
class FeatureSchema:
    """What a fitted predictor expects: feature names and the categories it saw."""

    numeric: list[str]
    categorical: dict[str, list[str]]  # name -> sorted vocabulary (codes are positions)
    specs: dict[str, str] = field(default_factory=dict)  # name -> the store's spec_id it was trained on

    @property
    def names(self) -> list[str]:
        return list(self.numeric) + list(self.categorical)

    def pair_columns(self) -> list[str]:
        """Columns of the pair matrix, in order. ``a:``/``b:`` are the raw sides."""
        cols = []
        for f in self.numeric:
            cols += [f"diff:{f}", f"prod:{f}", f"a:{f}", f"b:{f}"]
        for c in self.categorical:
            cols += [f"a:{c}", f"b:{c}"]
        return cols

    def base_feature_of_column(self) -> list[str]:
        return [f for f in self.numeric for _ in range(4)] + [c for c in self.categorical for _ in range(2)]

    def check(self, frame: FeatureFrame) -> None:
        """Refuse a frame whose features differ from the schema, naming what differs."""
        have = set(frame.numeric_names) | set(frame.categorical_names)
        missing = [f for f in self.names if f not in have]
        if missing:
            raise CkptselError(
                f"missing features {', '.join(missing)}: the model was trained with them; compute or "
                "import them for these checkpoints (`ckptsel import-table ...`)"
            )
        wrong_kind = [f for f in self.numeric if f not in frame.numeric_names] + \
                     [c for c in self.categorical if c not in frame.categorical_names]
        if wrong_kind:
            raise CkptselError(f"features {', '.join(wrong_kind)} have another type (numeric vs "
                               "categorical) than when the model was trained; re-import them")

    def encode(self, frame: FeatureFrame) -> tuple[np.ndarray, np.ndarray]:
        """Numeric block (n x k float64) and categorical codes (n x c float64, NaN = unknown)."""
        self.check(frame)
        num = frame.numeric[:, [frame.numeric_names.index(f) for f in self.numeric]].astype(np.float64)
        cat = np.full((len(frame), len(self.categorical)), np.nan)
        for j, (name, vocab) in enumerate(self.categorical.items()):
            index = {v: i for i, v in enumerate(vocab)}
            col = frame.categorical[:, frame.categorical_names.index(name)]
            cat[:, j] = [index.get(v, np.nan) for v in col]
        return num, cat


def pair_matrix(num: np.ndarray, cat: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Pair features for pairs (ia[r], ib[r]): per numeric p ``[p_A - p_B, p_A * p_B, p_A, p_B]``
    (Zeng et al., arXiv 2504.12491, Sec. 4), then the categorical codes of A and B."""
    n_pairs, k, c = len(ia), num.shape[1], cat.shape[1]
    out = np.empty((n_pairs, 4 * k + 2 * c))
    a, b = num[ia], num[ib]
    out[:, 0:4 * k:4] = a - b
    out[:, 1:4 * k:4] = a * b
    out[:, 2:4 * k:4] = a
    out[:, 3:4 * k:4] = b
    out[:, 4 * k::2] = cat[ia]
    out[:, 4 * k + 1::2] = cat[ib]
    return out


def ordered_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs (i, j), i != j."""
    ia, ib = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    keep = ia != ib
    return ia[keep], ib[keep]


class PairwisePredictor:
    """P(A fine-tunes better than B): a blend of two antisymmetric comparers.

    - **Trees**: LightGBM on Zeng et al.'s pair features ``[q_A - q_B, q_A * q_B, q_A, q_B]``
      (plus categorical sides), trained on both orders of every training pair with different
      targets and antisymmetrised, ``P_tree = 1/2 (f(A, B) + 1 - f(B, A))``.
    - **Ridge**: a pointwise ridge regression of the target's rank on the standardised
      quantiles of the numeric features and one-hot categories, compared through a logistic,
      ``P_ridge = sigmoid(k (s_A - s_B))``, with the scale k fitted on the training pairs.

    ``P = w P_ridge + (1 - w) P_tree`` with ``w = ridge_weight``; both parts satisfy
    ``P(A > B) + P(B > A) = 1``, so the blend does too. Every numeric feature enters as its
    quantile among the *training* checkpoints (q in [0, 1]; missing stays missing), which
    makes scales irrelevant and leaks nothing from held-out checkpoints.

    Defaults were chosen for tables of 20-200 labelled checkpoints (each label is a fine-tuning
    run) on synthetic tables of the shape of Zeng et al.'s study (``ckptsel.synthetic``,
    ``bench/tune_predictor.py``): with so few checkpoints, heavy shrinkage wins. Set
    ``ridge_weight=0`` for LightGBM alone.
    """

    def __init__(self, n_estimators: int = 300, learning_rate: float = 0.05, num_leaves: int = 6,
                 max_depth: int = 3, min_child_samples: int = 40, subsample: float = 0.7,
                 colsample_bytree: float = 0.7, reg_lambda: float = 5.0, ridge_alpha: float = 100.0,
                 ridge_weight: float = 0.7, seed: int = 0, n_jobs: int = 1):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.max_depth = max_depth
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.ridge_alpha = ridge_alpha
        self.ridge_weight = ridge_weight
        self.seed = seed
        self.n_jobs = n_jobs

    _PARAMS = ("n_estimators", "learning_rate", "num_leaves", "max_depth", "min_child_samples", "subsample",
               "colsample_bytree", "reg_lambda", "ridge_alpha", "ridge_weight", "seed", "n_jobs")

    def get_params(self) -> dict:
        return {k: getattr(self, k) for k in self._PARAMS}

    def lgb_params(self, n_pairs: int) -> dict:
        # A leaf needs min_child_samples pairs; on very small tables let the trees split at all.
        min_leaf = min(self.min_child_samples, max(5, n_pairs // 20))
        return {
            "objective": "binary", "learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
            "max_depth": self.max_depth, "min_data_in_leaf": min_leaf, "bagging_fraction": self.subsample,
            "bagging_freq": 1 if self.subsample < 1 else 0, "feature_fraction": self.colsample_bytree,
            "lambda_l2": self.reg_lambda, "seed": self.seed, "deterministic": True,
            "force_row_wise": True, "num_threads": self.n_jobs, "verbose": -1,
            "min_data_per_group": 20, "cat_smooth": 5.0, "cat_l2": 5.0,
        }

    # -- features --------------------------------------------------------------------------
    def _transform(self, frame: FeatureFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Quantiles of the numeric features (n x k), category codes (n x c), one-hots (n x L)."""
        num, cat = self.schema_.encode(frame)
        q = np.full(num.shape, np.nan)
        for j, ref in enumerate(self.quantile_refs_):
            ok = ~np.isnan(num[:, j])
            if len(ref):
                q[ok, j] = mid_rank_quantile(ref, num[ok, j])
        onehot = [(cat[:, j:j + 1] == np.arange(len(v))[None, :]).astype(float)
                  for j, v in enumerate(self.schema_.categorical.values())]
        return q, cat, np.hstack([np.empty((len(frame), 0))] + onehot)

    @staticmethod
    def _ridge_design(q: np.ndarray, onehot: np.ndarray) -> np.ndarray:
        # (q - 1/2) * sqrt(12) has unit variance for uniform q; a missing value sits at the middle.
        return np.hstack([np.nan_to_num((q - 0.5) * np.sqrt(12.0), nan=0.0), onehot])

    def _ridge_scores(self, q: np.ndarray, onehot: np.ndarray) -> np.ndarray:
        return self._ridge_design(q, onehot) @ self.ridge_coef_ + self.ridge_intercept_

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, X: FeatureFrame, y: Sequence[float]) -> "PairwisePredictor":
        import lightgbm as lgb

        y = np.asarray(y, dtype=np.float64)
        if len(y) != len(X):
            raise CkptselError(f"{len(X)} checkpoints but {len(y)} target values")
        keep = ~np.isnan(y)
        X, y = X.take(np.flatnonzero(keep)), y[keep]
        if len(np.unique(y)) < 2:
            raise CkptselError(f"need at least two labelled checkpoints with different target values "
                               f"to learn a comparison; have {len(y)}")
        self.schema_ = FeatureSchema(
            numeric=list(X.numeric_names),
            categorical={c: sorted({v for v in X.column(c) if v is not None})
                         for c in sorted(X.categorical_names)},
            specs={f: X.specs[f] for f in [*X.numeric_names, *sorted(X.categorical_names)] if f in X.specs},
        )
        num, _ = self.schema_.encode(X)
        self.quantile_refs_ = [np.sort(col[~np.isnan(col)]) for col in num.T]
        q, cat, onehot = self._transform(X)
        ia, ib = ordered_pairs(len(X))
        differ = y[ia] != y[ib]
        ia, ib = ia[differ], ib[differ]
        target = (y[ia] > y[ib]).astype(np.float64)

        # Ridge on the target's rank (unit variance), then the logistic scale of score gaps.
        design = self._ridge_design(q, onehot)
        rank_target = (mid_rank_quantile(np.sort(y), y) - 0.5) * np.sqrt(12.0)
        self.ridge_coef_, self.ridge_intercept_ = ridge_fit(design, rank_target, self.ridge_alpha)
        gaps = (design @ self.ridge_coef_)[ia] - (design @ self.ridge_coef_)[ib]
        self.ridge_scale_ = logistic_scale(gaps, target)

        pairs = pair_matrix(q, cat, ia, ib)
        k, c = len(self.schema_.numeric), len(self.schema_.categorical)
        data = lgb.Dataset(pairs, target, feature_name=_safe_names(self.schema_.pair_columns()),
                           categorical_feature=list(range(4 * k, 4 * k + 2 * c)), params={"verbose": -1},
                           free_raw_data=True)
        self.booster_ = lgb.train(self.lgb_params(len(ia)), data, num_boost_round=self.n_estimators)
        self.n_train_checkpoints_ = len(X)
        self.n_train_pairs_ = len(ia)
        self.meta_ = {}
        return self

    # -- predicting ------------------------------------------------------------------------
    def _raw(self, pairs: np.ndarray, num_threads: int | None = None) -> np.ndarray:
        threads = self.n_jobs if num_threads is None else num_threads
        return self.booster_.predict(pairs, raw_score=True, num_threads=threads)

    def predict_proba(self, A: FeatureFrame, B: FeatureFrame) -> np.ndarray:
        """P(A[r] fine-tunes better than B[r]) for each row r."""
        if len(A) != len(B):
            raise CkptselError(f"A has {len(A)} checkpoints but B has {len(B)}; pairs are row-aligned")
        qa, ca, oa = self._transform(A)
        qb, cb, ob = self._transform(B)
        q, cat = np.vstack([qa, qb]), np.vstack([ca, cb])
        ia = np.arange(len(A))
        ib = ia + len(A)
        tree = 0.5 * (_sigmoid(self._raw(pair_matrix(q, cat, ia, ib)))
                      + 1.0 - _sigmoid(self._raw(pair_matrix(q, cat, ib, ia))))
        ridge = _sigmoid(self.ridge_scale_ * (self._ridge_scores(qa, oa) - self._ridge_scores(qb, ob)))
        return self.ridge_weight * ridge + (1.0 - self.ridge_weight) * tree

    def compare_all(self, X: FeatureFrame) -> np.ndarray:
        """Matrix P with P[i, j] = P(X[i] better than X[j]); every ordered pair in one batch."""
        q, cat, onehot = self._transform(X)
        n = len(X)
        ia, ib = ordered_pairs(n)
        f = np.full((n, n), 0.5)
        # All n(n-1) ordered pairs, in float64 blocks of bounded memory, on all cores (0 = default).
        for lo in range(0, len(ia), PAIR_BLOCK):
            a, b = ia[lo:lo + PAIR_BLOCK], ib[lo:lo + PAIR_BLOCK]
            f[a, b] = _sigmoid(self._raw(pair_matrix(q, cat, a, b), num_threads=0))
        s = self._ridge_scores(q, onehot)
        ridge = _sigmoid(self.ridge_scale_ * (s[:, None] - s[None, :]))
        p = self.ridge_weight * ridge + (1.0 - self.ridge_weight) * 0.5 * (f + 1.0 - f.T)
        np.fill_diagonal(p, 0.5)
        return p

    def explain(self, A: FeatureFrame, B: FeatureFrame, row: int = 0) -> list[dict]:
        """Per base feature, its contribution to the log-odds of A > B, positive favouring A:
        ``w * k * (ridge term of A - ridge term of B) + (1 - w) * 1/2 (SHAP(A, B) - SHAP(B, A))``,
        with LightGBM's SHAP values summed over the feature's pair columns. (The blend mixes
        probabilities, so these add up to the log-odds of each part, not of the blend.)"""
        a_row, b_row = A.take([row]), B.take([row])
        qa, ca, oa = self._transform(a_row)
        qb, cb, ob = self._transform(b_row)
        q, cat = np.vstack([qa, qb]), np.vstack([ca, cb])
        fwd = self.booster_.predict(pair_matrix(q, cat, np.array([0]), np.array([1])), pred_contrib=True)[0]
        bwd = self.booster_.predict(pair_matrix(q, cat, np.array([1]), np.array([0])), pred_contrib=True)[0]
        w = self.ridge_weight
        contrib: dict[str, float] = {f: 0.0 for f in self.schema_.names}
        for col, base in enumerate(self.schema_.base_feature_of_column()):
            contrib[base] += (1.0 - w) * 0.5 * (fwd[col] - bwd[col])
        terms = (self._ridge_design(qa, oa) - self._ridge_design(qb, ob))[0] * self.ridge_coef_ * self.ridge_scale_
        for base, t in zip(self._ridge_columns(), terms):
            contrib[base] += w * t
        a_vals, b_vals = A.as_dict(row), B.as_dict(row)
        out = [{"feature": f, "contribution": float(v), "a": a_vals.get(f), "b": b_vals.get(f)}
               for f, v in contrib.items()]
        return sorted(out, key=lambda r: -abs(r["contribution"]))

    def _ridge_columns(self) -> list[str]:
        return list(self.schema_.numeric) + [c for c, v in self.schema_.categorical.items() for _ in v]

    def feature_importance(self) -> dict[str, float]:
        """Share of each base feature in the model: the blend weight times its share of the trees'
        total gain, plus the ridge weight times its share of the ridge's |coefficient| mass."""
        gain = self.booster_.feature_importance(importance_type="gain")
        tree = dict.fromkeys(self.schema_.names, 0.0)
        for g, base in zip(gain, self.schema_.base_feature_of_column()):
            tree[base] += float(g)
        ridge = dict.fromkeys(self.schema_.names, 0.0)
        for base, c in zip(self._ridge_columns(), self.ridge_coef_):
            ridge[base] += abs(float(c))
        t_sum, r_sum = sum(tree.values()) or 1.0, sum(ridge.values()) or 1.0
        w = self.ridge_weight
        out = {f: w * ridge[f] / r_sum + (1 - w) * tree[f] / t_sum for f in self.schema_.names}
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    # -- persistence -----------------------------------------------------------------------
    def save(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write ``model.txt`` (LightGBM) and ``schema.json`` (features, vocabularies, quantile
        references, ridge coefficients, params)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / (MODEL_FILE + ".tmp")
        self.booster_.save_model(str(tmp))
        tmp.replace(directory / MODEL_FILE)
        meta = {"recipe": RECIPE, "schema": asdict(self.schema_), "params": self.get_params(),
                "quantile_refs": [r.tolist() for r in self.quantile_refs_],
                "ridge": {"coef": self.ridge_coef_.tolist(), "intercept": self.ridge_intercept_,
                          "scale": self.ridge_scale_},
                "n_train_checkpoints": self.n_train_checkpoints_, "n_train_pairs": self.n_train_pairs_,
                **(extra or {})}
        tmp = directory / (SCHEMA_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2))  # key order of schema.categorical is column order
        tmp.replace(directory / SCHEMA_FILE)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "PairwisePredictor":
        import lightgbm as lgb

        directory = Path(directory)
        if not (directory / MODEL_FILE).exists() or not (directory / SCHEMA_FILE).exists():
            raise CkptselError(f"{directory} holds no exported predictor ({MODEL_FILE} + {SCHEMA_FILE}); "
                               "train one with `ckptsel train --target T --name NAME`")
        meta = json.loads((directory / SCHEMA_FILE).read_text())
        if meta.get("recipe") != RECIPE:
            raise CkptselError(f"{directory} was written with pair recipe {meta.get('recipe')!r}; this "
                               f"ckptsel reads {RECIPE!r}: retrain it with `ckptsel train`")
        self = cls(**meta["params"])
        self.schema_ = FeatureSchema(**meta["schema"])
        self.quantile_refs_ = [np.asarray(r, dtype=np.float64) for r in meta["quantile_refs"]]
        self.ridge_coef_ = np.asarray(meta["ridge"]["coef"], dtype=np.float64)
        self.ridge_intercept_ = float(meta["ridge"]["intercept"])
        self.ridge_scale_ = float(meta["ridge"]["scale"])
        self.booster_ = lgb.Booster(model_file=str(directory / MODEL_FILE))
        self.n_train_checkpoints_ = meta["n_train_checkpoints"]
        self.n_train_pairs_ = meta["n_train_pairs"]
        self.meta_ = meta
        return self


def mid_rank_quantile(reference: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Mid-rank quantile of each x among the sorted ``reference``: (#below + #below-or-equal) / 2n.
    Values outside the reference clip to 0 or 1; ties share their average rank."""
    n = len(reference)
    return (np.searchsorted(reference, x, "left") + np.searchsorted(reference, x, "right")) / (2.0 * n)


def ridge_fit(X: np.ndarray, t: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """argmin_w,b ||t - X w - b||^2 + alpha ||w||^2 (intercept not penalised), in closed form."""
    x_mean, t_mean = X.mean(axis=0), t.mean()
    Xc = X - x_mean
    coef = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(X.shape[1]), Xc.T @ (t - t_mean))
    return coef, float(t_mean - x_mean @ coef)


def logistic_scale(gaps: np.ndarray, labels: np.ndarray, l2: float = 1.0, iters: int = 50) -> float:
    """k minimising 1/2 (k sd)^2 + sum log(1 + exp(-(2 label - 1) k gap)): a one-parameter
    L2-penalised logistic regression on the standardised gaps (Newton's method)."""
    sd = float(gaps.std()) + 1e-12
    x, sign = gaps / sd, 2.0 * labels - 1.0
    w = 0.0
    for _ in range(iters):
        p = _sigmoid(sign * w * x)
        grad = w / l2 - np.sum((1.0 - p) * sign * x)
        hess = 1.0 / l2 + np.sum(p * (1.0 - p) * x * x)
        step = grad / hess
        w -= step
        if abs(step) < 1e-12:
            break
    return w / sd


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _safe_names(names: list[str]) -> list[str]:
    # LightGBM rejects some JSON special characters in feature names.
    table = str.maketrans({c: "_" for c in '[]{}":,'})
    return [n.translate(table) for n in names]


class DirectionBaseline:
    """The single-feature rule "higher is better" or "lower is better", whichever is right more
    often on the training pairs (ties, including missing values, count 1/2)."""

    def __init__(self, feature: str):
        self.feature = feature

    def fit(self, values: np.ndarray, y: np.ndarray) -> "DirectionBaseline":
        ia, ib = ordered_pairs(len(y))
        differ = y[ia] != y[ib]
        ia, ib = ia[differ], ib[differ]
        higher = pair_scores(values[ia], values[ib], +1)
        truth = y[ia] > y[ib]
        acc_higher = np.mean(np.where(truth, higher, 1 - higher)) if len(ia) else 0.5
        self.sign_ = +1 if acc_higher >= 0.5 else -1
        return self

    def predict_proba(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return pair_scores(a, b, self.sign_)


def pair_scores(a: np.ndarray, b: np.ndarray, sign: int) -> np.ndarray:
    """1 when sign * (a - b) > 0, 0 when < 0, 1/2 on ties and missing values."""
    d = sign * (np.asarray(a, dtype=float) - np.asarray(b, dtype=float))
    return np.where(np.isnan(d), 0.5, np.where(d > 0, 1.0, np.where(d < 0, 0.0, 0.5)))
