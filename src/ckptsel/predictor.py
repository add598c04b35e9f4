"""The pairwise predictor: P(checkpoint A fine-tunes better than checkpoint B).

"Learning to compare" as in Zeng et al., *Can Pre-training Indicators Reliably Predict
Fine-tuning Outcomes of LLMs?* (arXiv 2504.12491), Sec. 4: for every numeric
pretraining-side feature p the pair features are ``[p_A - p_B, p_A * p_B, p_A, p_B]``;
categorical metadata (objective, data mix, ...) enters as a LightGBM categorical feature
of each side. A gradient-boosted classifier f is trained on both orders of every pair of
training checkpoints whose targets differ, and the prediction is antisymmetrised:

    P(A > B) = 1/2 * (f(A, B) + 1 - f(B, A)),   so   P(A > B) + P(B > A) = 1 exactly.

The estimator follows scikit-learn's contract: hyperparameters in ``__init__``, learned
state in attributes ending in ``_``, ``fit`` returns ``self``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ckptsel.errors import CkptselError
from ckptsel.store import FeatureFrame

MODEL_FILE = "model.txt"
SCHEMA_FILE = "schema.json"
RECIPE = "zeng2025-pairs/antisymmetric/v1"


@dataclass
class FeatureSchema:
    """What a fitted predictor expects: feature names and the categories it saw."""

    numeric: list[str]
    categorical: dict[str, list[str]]  # name -> sorted vocabulary (codes are positions)

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


def pair_matrix(num: np.ndarray, cat: np.ndarray, ia: np.ndarray, ib: np.ndarray,
                dtype=np.float64) -> np.ndarray:
    """Pair features for pairs (ia[r], ib[r]): per numeric p ``[p_A - p_B, p_A * p_B, p_A, p_B]``
    (Zeng et al., arXiv 2504.12491, Sec. 4), then the categorical codes of A and B."""
    n_pairs, k, c = len(ia), num.shape[1], cat.shape[1]
    out = np.empty((n_pairs, 4 * k + 2 * c), dtype=dtype)
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
    """Antisymmetric LightGBM pairwise classifier over Zeng et al.'s pair features.

    Defaults are set for tables of 20-200 labelled checkpoints (each label is a
    fine-tuning run): shallow trees, strong row/column subsampling, L2 regularisation.
    """

    def __init__(self, n_estimators: int = 300, learning_rate: float = 0.05, num_leaves: int = 8,
                 min_child_samples: int = 20, subsample: float = 0.8, colsample_bytree: float = 0.8,
                 reg_lambda: float = 1.0, seed: int = 0, n_jobs: int = 1):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.seed = seed
        self.n_jobs = n_jobs

    def get_params(self) -> dict:
        return {k: getattr(self, k) for k in ("n_estimators", "learning_rate", "num_leaves",
                                                  "min_child_samples", "subsample", "colsample_bytree",
                                                  "reg_lambda", "seed", "n_jobs")}

    def lgb_params(self) -> dict:
        return {
            "objective": "binary", "learning_rate": self.learning_rate, "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_child_samples, "bagging_fraction": self.subsample,
            "bagging_freq": 1 if self.subsample < 1 else 0, "feature_fraction": self.colsample_bytree,
            "lambda_l2": self.reg_lambda, "seed": self.seed, "deterministic": True,
            "force_row_wise": True, "num_threads": self.n_jobs, "verbose": -1,
            "min_data_per_group": 5, "cat_smooth": 10.0, "max_cat_to_onehot": 8,
        }

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
        )
        num, cat = self.schema_.encode(X)
        ia, ib = ordered_pairs(len(X))
        differ = y[ia] != y[ib]
        ia, ib = ia[differ], ib[differ]
        pairs = pair_matrix(num, cat, ia, ib)
        target = (y[ia] > y[ib]).astype(np.float64)
        n_cat = len(self.schema_.categorical)
        cat_idx = list(range(4 * len(self.schema_.numeric), 4 * len(self.schema_.numeric) + 2 * n_cat))
        data = lgb.Dataset(pairs, target, feature_name=_safe_names(self.schema_.pair_columns()),
                           categorical_feature=cat_idx, params={"verbose": -1}, free_raw_data=True)
        self.booster_ = lgb.train(self.lgb_params(), data, num_boost_round=self.n_estimators)
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
        num_a, cat_a = self.schema_.encode(A)
        num_b, cat_b = self.schema_.encode(B)
        num, cat = np.vstack([num_a, num_b]), np.vstack([cat_a, cat_b])
        ia = np.arange(len(A))
        ib = ia + len(A)
        forward = _sigmoid(self._raw(pair_matrix(num, cat, ia, ib)))
        backward = _sigmoid(self._raw(pair_matrix(num, cat, ib, ia)))
        return 0.5 * (forward + 1.0 - backward)

    def compare_all(self, X: FeatureFrame) -> np.ndarray:
        """Matrix P with P[i, j] = P(X[i] better than X[j]); every ordered pair in one batch."""
        num, cat = self.schema_.encode(X)
        n = len(X)
        ia, ib = ordered_pairs(n)
        f = np.full((n, n), 0.5)
        # One batch of all n(n-1) ordered pairs; all cores (0 = LightGBM's default) for big batches.
        f[ia, ib] = _sigmoid(self._raw(pair_matrix(num, cat, ia, ib, dtype=np.float32), num_threads=0))
        p = 0.5 * (f + 1.0 - f.T)
        np.fill_diagonal(p, 0.5)
        return p

    def explain(self, A: FeatureFrame, B: FeatureFrame, row: int = 0) -> list[dict]:
        """Per base feature, its antisymmetrised contribution to the log-odds of A > B
        (LightGBM's SHAP values, summed over the feature's pair columns): positive favours A."""
        num_a, cat_a = self.schema_.encode(A.take([row]))
        num_b, cat_b = self.schema_.encode(B.take([row]))
        num, cat = np.vstack([num_a, num_b]), np.vstack([cat_a, cat_b])
        fwd = self.booster_.predict(pair_matrix(num, cat, np.array([0]), np.array([1])), pred_contrib=True)[0]
        bwd = self.booster_.predict(pair_matrix(num, cat, np.array([1]), np.array([0])), pred_contrib=True)[0]
        contrib: dict[str, float] = {}
        for col, base in enumerate(self.schema_.base_feature_of_column()):
            contrib[base] = contrib.get(base, 0.0) + 0.5 * (fwd[col] - bwd[col])
        a_vals, b_vals = A.as_dict(row), B.as_dict(row)
        out = [{"feature": f, "contribution": float(v), "a": a_vals.get(f), "b": b_vals.get(f)}
               for f, v in contrib.items()]
        return sorted(out, key=lambda r: -abs(r["contribution"]))

    def feature_importance(self) -> dict[str, float]:
        """Total gain per base feature (summed over its pair columns)."""
        gain = self.booster_.feature_importance(importance_type="gain")
        out: dict[str, float] = {}
        for g, base in zip(gain, self.schema_.base_feature_of_column()):
            out[base] = out.get(base, 0.0) + float(g)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    # -- persistence -----------------------------------------------------------------------
    def save(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write ``model.txt`` (LightGBM) and ``schema.json`` (features, vocabularies, params)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / (MODEL_FILE + ".tmp")
        self.booster_.save_model(str(tmp))
        tmp.replace(directory / MODEL_FILE)
        meta = {"recipe": RECIPE, "schema": asdict(self.schema_), "params": self.get_params(),
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
        self.booster_ = lgb.Booster(model_file=str(directory / MODEL_FILE))
        self.n_train_checkpoints_ = meta["n_train_checkpoints"]
        self.n_train_pairs_ = meta["n_train_pairs"]
        self.meta_ = meta
        return self


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
