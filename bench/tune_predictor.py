"""Compare pairwise checkpoint-comparison predictors under the acceptance protocol.

Protocol (Zeng et al., arXiv 2504.12491, Sec. on learning-to-compare): for each table and
outcome, 20 repeats; each repeat draws 60% of the checkpoints for training, the predictor is
fitted on pairs among training checkpoints only (every statistic, normalisation included, is
fitted on them), and it is scored on the unordered pairs of the other 40% whose targets
differ: correct when P(A>B) > 0.5 and target_A > target_B (or < and <); P == 0.5 counts 1/2.
A predictor that is not antisymmetric is scored on both orders of each test pair (the mean is
its expected accuracy under a random order).

Self-contained on purpose (numpy, pandas, lightgbm, scikit-learn; not ckptsel).

    python bench/tune_predictor.py --regimes calibrated,messy --seeds 0,1,2 [--variants a,b]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression, Ridge, RidgeCV

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zeng_like  # noqa: E402

warnings.filterwarnings("ignore", message="X does not have valid feature names")
N_REPEATS = 20
TRAIN_FRAC = 0.6

# ---------------------------------------------------------------------------------------
# Per-checkpoint preprocessing, fitted on training checkpoints only.


@dataclass
class Prep:
    """Numeric proxies normalised by `kind` ('raw', 'rank', 'z'); configs as integer codes
    (LightGBM categoricals; unseen level -> NaN) and one-hot columns (unseen level -> zeros)."""

    kind: str = "raw"
    train_num_: list = field(default_factory=list)
    mean_: np.ndarray | None = None
    sd_: np.ndarray | None = None
    levels_: list = field(default_factory=list)

    def fit(self, num: np.ndarray, cat: np.ndarray) -> "Prep":
        self.train_num_ = [np.sort(c[~np.isnan(c)]) for c in num.T]
        self.mean_ = np.nanmean(num, axis=0)
        sd = np.nanstd(num, axis=0)
        self.sd_ = np.where(sd > 0, sd, 1.0)
        self.levels_ = [sorted(set(c)) for c in cat.T]
        return self

    def numeric(self, num: np.ndarray) -> np.ndarray:
        if self.kind == "raw":
            return num.astype(float)
        if self.kind == "z":
            return (num - self.mean_) / self.sd_
        out = np.full(num.shape, np.nan)  # 'rank': mid-rank quantile among training values
        for j, ref in enumerate(self.train_num_):
            x = num[:, j]
            ok = ~np.isnan(x)
            if len(ref) == 0:
                continue
            lo = np.searchsorted(ref, x[ok], side="left")
            hi = np.searchsorted(ref, x[ok], side="right")
            out[ok, j] = (lo + hi) / (2.0 * len(ref))
        return out

    def codes(self, cat: np.ndarray) -> np.ndarray:
        out = np.full(cat.shape, np.nan)
        for j, lev in enumerate(self.levels_):
            m = {v: i for i, v in enumerate(lev)}
            out[:, j] = [m.get(v, np.nan) for v in cat[:, j]]
        return out

    def onehot(self, cat: np.ndarray) -> np.ndarray:
        cols = [(cat[:, j] == v).astype(float) for j, lev in enumerate(self.levels_) for v in lev]
        return np.column_stack(cols) if cols else np.zeros((len(cat), 0))


def all_pairs(n: int, both: bool):
    i, j = np.triu_indices(n, 1)
    return (np.r_[i, j], np.r_[j, i]) if both else (i, j)


# ---------------------------------------------------------------------------------------
# Predictors. Each has fit(num, cat, y) on training checkpoints and pair_proba(num, cat, ia, ib)
# returning P(row ia beats row ib) for the given order (not necessarily antisymmetric).

LGB_DEFAULT = dict(verbose=-1, deterministic=True, force_row_wise=True, n_jobs=1)
SMALL = dict(n_estimators=300, learning_rate=0.05, num_leaves=6, max_depth=3, min_child_samples=40,
             subsample=0.7, subsample_freq=1, colsample_bytree=0.7, reg_lambda=5.0,
             min_data_per_group=20, cat_smooth=5.0, cat_l2=5.0)


def gap_weights(y, ia, ib, mode):
    if mode is None:
        return None
    gap = np.abs(y[ia] - y[ib]) / (np.std(y) + 1e-12)
    if mode == "gap":
        return gap + 0.1
    if mode == "sqrtgap":
        return np.sqrt(gap) + 0.05
    if mode.startswith("droptie"):  # drop pairs closer than a fraction of the target's sd
        return (gap >= float(mode[7:] or 0.1)).astype(float)
    raise ValueError(mode)


class PairGBM:
    """LightGBM on pair features [d, prod, a, b] per proxy + a.<cfg>, b.<cfg> categoricals."""

    def __init__(self, params=None, norm="raw", both=True, weight=None, feats="dpab", seed=0,
                 bag=1):
        self.params, self.norm, self.both, self.weight = params or {}, norm, both, weight
        self.feats, self.seed, self.bag = feats, seed, bag

    def _X(self, num, cat, ia, ib):
        N = self.prep_.numeric(num)
        parts = []
        if self.feats == "diff":  # antisymmetric inputs: proxy and one-hot config differences
            O = self.prep_.onehot(cat)
            return np.hstack([N[ia] - N[ib], O[ia] - O[ib]]), []
        for f in self.feats:
            parts.append({"d": N[ia] - N[ib], "p": N[ia] * N[ib], "a": N[ia], "b": N[ib]}[f])
        C = self.prep_.codes(cat)
        k = sum(p.shape[1] for p in parts)
        X = np.hstack(parts + [C[ia], C[ib]])
        return X, list(range(k, X.shape[1]))

    def fit(self, num, cat, y):
        self.prep_ = Prep(self.norm).fit(num, cat)
        ia, ib = all_pairs(len(y), both=True)
        if not self.both:  # one row per unordered pair, in a random order
            i, j = all_pairs(len(y), both=False)
            flip = np.random.default_rng(self.seed).random(len(i)) < 0.5
            ia, ib = np.where(flip, j, i), np.where(flip, i, j)
        keep = np.ones(len(ia), bool)
        w = gap_weights(y, ia, ib, self.weight)
        if w is not None:
            keep = w > 0
        X, cats = self._X(num, cat, ia[keep], ib[keep])
        lab = (y[ia] > y[ib])[keep].astype(int)
        self.models_ = []
        for b in range(self.bag):
            m = lgb.LGBMClassifier(**{**LGB_DEFAULT, **self.params, "random_state": self.seed + b})
            m.fit(X, lab, sample_weight=None if w is None else w[keep],
                  categorical_feature=cats if cats else "auto")
            self.models_.append(m)
        return self

    def pair_proba(self, num, cat, ia, ib):
        X, _ = self._X(num, cat, ia, ib)
        return np.mean([m.predict_proba(X)[:, 1] for m in self.models_], axis=0)


class PairLinear:
    """Logistic regression without intercept on differences of normalised proxies and one-hot
    configs (RankNet-style; antisymmetric by construction). NaN -> training median (0 after z)."""

    def __init__(self, C=0.3, norm="rank", weight=None, seed=0):
        self.C, self.norm, self.weight, self.seed = C, norm, weight, seed

    def _F(self, num, cat):
        N = self.prep_.numeric(num)
        if self.norm == "rank":
            N = (N - 0.5) * np.sqrt(12)  # unit variance for uniform quantiles
        N = np.where(np.isnan(N), 0.0, N)
        return np.hstack([N, self.prep_.onehot(cat)])

    def fit(self, num, cat, y):
        self.prep_ = Prep(self.norm).fit(num, cat)
        F = self._F(num, cat)
        ia, ib = all_pairs(len(y), both=True)
        w = gap_weights(y, ia, ib, self.weight)
        keep = np.ones(len(ia), bool) if w is None else w > 0
        ia, ib = ia[keep], ib[keep]
        lab = (y[ia] > y[ib]).astype(int)
        self.m_ = LogisticRegression(C=self.C, fit_intercept=False, max_iter=2000)
        self.m_.fit(F[ia] - F[ib], lab, sample_weight=None if w is None else w[keep])
        return self

    def pair_proba(self, num, cat, ia, ib):
        F = self._F(num, cat)
        return self.m_.predict_proba(F[ia] - F[ib])[:, 1]


class PointRidge:
    """Pointwise ridge on normalised proxies + config one-hots, predicting the target's
    within-training rank (scaled to unit variance); pairs compared by predicted score.

    alpha: float, or 'cv' for RidgeCV's leave-one-out choice on training checkpoints.
    cfg: 'onehot' (0/1 columns), 'std' (one-hots standardised on training), 'none'.
    """

    def __init__(self, alpha=3.0, norm="rank", cfg="onehot", target="rank", quad=False, cfg_scale=1.0):
        self.alpha, self.norm, self.cfg, self.target, self.quad = alpha, norm, cfg, target, quad
        self.cfg_scale = cfg_scale  # >1 penalises config effects less than proxy effects

    def _F(self, num, cat):
        N = self.prep_.numeric(num)
        if self.norm == "rank":
            N = (N - 0.5) * np.sqrt(12)
        N = np.where(np.isnan(N), 0.0, N)
        if self.quad:  # centred squares of unit-variance uniforms: an inverted U is linear here
            N = np.hstack([N, (N ** 2 - 1.0) / np.sqrt(0.8)])
        if self.cfg == "none":
            return N
        O = self.prep_.onehot(cat)
        if self.cfg == "std":
            O = (O - self.o_mean_) / self.o_sd_
        return np.hstack([N, self.cfg_scale * O])

    def fit(self, num, cat, y):
        self.prep_ = Prep(self.norm).fit(num, cat)
        O = self.prep_.onehot(cat)
        self.o_mean_, sd = O.mean(axis=0), O.std(axis=0)
        self.o_sd_ = np.where(sd > 0, sd, 1.0)
        F = self._F(num, cat)
        if self.target == "rank":
            t = (pd.Series(y).rank().to_numpy() / len(y) - 0.5 / len(y) - 0.5) * np.sqrt(12)
        else:
            t = (y - y.mean()) / (y.std() + 1e-12)
        if self.alpha == "cv":
            self.m_ = RidgeCV(alphas=np.logspace(-1, 4, 21)).fit(F, t)
        elif isinstance(self.alpha, str) and self.alpha.startswith("per_n:"):  # alpha = c * n_train
            self.m_ = Ridge(alpha=float(self.alpha[6:]) * len(y)).fit(F, t)
        else:
            self.m_ = Ridge(alpha=self.alpha).fit(F, t)
        # Scale of P(A>B) = sigmoid(k * (s_A - s_B)), fitted on training pairs (matters in blends).
        s = self.m_.predict(F)
        ia, ib = all_pairs(len(y), both=True)
        lab = (y[ia] > y[ib]).astype(int)
        d = (s[ia] - s[ib])[:, None]
        self.k_ = LogisticRegression(C=1.0, fit_intercept=False).fit(d / (d.std() + 1e-12), lab).coef_[0, 0] / (d.std() + 1e-12)
        return self

    def pair_proba(self, num, cat, ia, ib):
        s = self.m_.predict(self._F(num, cat))
        return 1 / (1 + np.exp(-self.k_ * (s[ia] - s[ib])))


class RidgeBoost(PairGBM):
    """Antisymmetric pair LightGBM boosted from a pointwise ridge: the ridge margin
    k * (s_A - s_B) is the init score, trees only learn what the ridge misses."""

    def __init__(self, ridge, params=None, norm="rank", feats="dpab", seed=0):
        super().__init__(params, norm, both=True, feats=feats, seed=seed)
        self.ridge = ridge

    def _margin(self, num, cat, ia, ib):
        s = self.ridge.m_.predict(self.ridge._F(num, cat))
        return self.ridge.k_ * (s[ia] - s[ib])

    def fit(self, num, cat, y):
        self.ridge.fit(num, cat, y)
        self.prep_ = Prep(self.norm).fit(num, cat)
        ia, ib = all_pairs(len(y), both=True)
        X, cats = self._X(num, cat, ia, ib)
        self.m_ = lgb.LGBMClassifier(**{**LGB_DEFAULT, **self.params, "random_state": self.seed})
        self.m_.fit(X, (y[ia] > y[ib]).astype(int), init_score=self._margin(num, cat, ia, ib),
                    categorical_feature=cats)
        return self

    def pair_proba(self, num, cat, ia, ib):
        X, _ = self._X(num, cat, ia, ib)
        z = self.m_.predict(X, raw_score=True) + self._margin(num, cat, ia, ib)
        return 1 / (1 + np.exp(-z))


class Blend:
    """Mean of the antisymmetrised probabilities of its members."""

    def __init__(self, *members, weights=None):
        self.members = members
        self.weights = weights or [1.0 / len(members)] * len(members)

    def fit(self, num, cat, y):
        for m in self.members:
            m.fit(num, cat, y)
        return self

    def pair_proba(self, num, cat, ia, ib):
        return sum(w * antisym(m, num, cat, ia, ib) for w, m in zip(self.weights, self.members))


def antisym(model, num, cat, ia, ib):
    return 0.5 * (model.pair_proba(num, cat, ia, ib) + 1 - model.pair_proba(num, cat, ib, ia))


RIDGE_ALPHA, RIDGE_WEIGHT = 100.0, 0.7


def default_predictor(seed=0):
    """The recommended recipe: 0.7 * pointwise ridge (alpha 100) + 0.3 * antisymmetric
    LightGBM with SMALL params, both on within-training mid-rank quantiles of the proxies."""
    return Blend(PointRidge(RIDGE_ALPHA, "rank"), PairGBM(SMALL, "rank", seed=seed),
                 weights=[RIDGE_WEIGHT, 1 - RIDGE_WEIGHT])


# Printed by default; the sweeps below were used to choose the default (see the report).
MAIN_VARIANTS = ["paper", "anti_default", "anti_small", "anti_small_rank", "anti_small_rank_gap",
                 "anti_small_rank_droptie", "anti_small_diff", "lin_rank_C0.03",
                 "blend_lin0.03_small_rank", "point_ridge_a100", "ridgeboost100", "default"]


def variants():
    """name -> (factory(seed), antisymmetrise at prediction)."""
    P = SMALL
    L15 = {**SMALL, "num_leaves": 15, "max_depth": -1, "min_child_samples": 10, "learning_rate": 0.02}
    boost = dict(SMALL, n_estimators=100, learning_rate=0.03)
    V = {
        # LightGBM with library defaults, one row per training pair in a random order.
        "paper": (lambda s: PairGBM({}, "raw", both=False, seed=s), False),
        "anti_default": (lambda s: PairGBM({}, "raw", seed=s), True),
        "anti_small": (lambda s: PairGBM(P, "raw", seed=s), True),
        "anti_small_rank": (lambda s: PairGBM(P, "rank", seed=s), True),
        "anti_small_rank_dab": (lambda s: PairGBM(P, "rank", feats="dab", seed=s), True),
        "anti_small_rank_d": (lambda s: PairGBM(P, "rank", feats="d", seed=s), True),
        "anti_small_diff": (lambda s: PairGBM(P, "rank", feats="diff", seed=s), True),
        "anti_small_rank_gap": (lambda s: PairGBM(P, "rank", weight="sqrtgap", seed=s), True),
        "anti_small_rank_droptie": (lambda s: PairGBM(P, "rank", weight="droptie0.1", seed=s), True),
        "anti_small_rank_bag5": (lambda s: PairGBM(P, "rank", seed=s, bag=5), True),
        "anti_L15_rank": (lambda s: PairGBM(L15, "rank", seed=s), True),
        "lin_z_C0.3": (lambda s: PairLinear(0.3, "z"), True),
        "blend_lin0.03_small_rank": (lambda s: Blend(PairLinear(0.03, "rank"), PairGBM(P, "rank", seed=s)), True),
        "point_ridge_cv": (lambda s: PointRidge("cv", "rank"), True),
        "point_ridge_std_cv": (lambda s: PointRidge("cv", "rank", cfg="std"), True),
        "point_ridge_nocfg_a30": (lambda s: PointRidge(30.0, "rank", cfg="none"), True),
        "point_ridge_ztarget_a30": (lambda s: PointRidge(30.0, "rank", target="z"), True),
        "point_ridge_znorm_a30": (lambda s: PointRidge(30.0, "z"), True),
        "point_ridge_n3": (lambda s: PointRidge("per_n:3", "rank"), True),
        "ridgeboost100": (lambda s: RidgeBoost(PointRidge(100.0, "rank"), boost, seed=s), True),
        "ridgeboost100_n300": (lambda s: RidgeBoost(PointRidge(100.0, "rank"), dict(boost, n_estimators=300), seed=s), True),
        "default": (default_predictor, True),
    }
    for c in (0.03, 0.1, 0.3, 1.0):
        V[f"lin_rank_C{c:g}"] = (lambda s, c=c: PairLinear(c, "rank"), True)
    for a in (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e4):
        V[f"point_ridge_a{a:g}"] = (lambda s, a=a: PointRidge(a, "rank"), True)
        V[f"point_ridge_std_a{a:g}"] = (lambda s, a=a: PointRidge(a, "rank", cfg="std"), True)
    for a in (30.0, 100.0, 1e4):
        V[f"point_ridge_quad_a{a:g}"] = (lambda s, a=a: PointRidge(a, "rank", quad=True), True)
    for c in (0.5, 2.0):
        V[f"point_ridge_a100_cfg{c:g}"] = (lambda s, c=c: PointRidge(100.0, "rank", cfg_scale=c), True)
    for w in (0.3, 0.5, 0.6, 0.7, 0.8):  # weight of the ridge in ridge + LightGBM blends
        V[f"blend{w:g}_ridge100_small_rank"] = (lambda s, w=w: Blend(PointRidge(100.0, "rank"), PairGBM(P, "rank", seed=s), weights=[w, 1 - w]), True)
    V["blend0.5_ridgequad100_small_rank"] = (lambda s: Blend(PointRidge(100.0, "rank", quad=True), PairGBM(P, "rank", seed=s)), True)
    V["blend0.7_ridge30_small_rank"] = (lambda s: Blend(PointRidge(30.0, "rank"), PairGBM(P, "rank", seed=s), weights=[0.7, 0.3]), True)
    V["blend0.7_ridge100_L15"] = (lambda s: Blend(PointRidge(100.0, "rank"), PairGBM(L15, "rank", seed=s), weights=[0.7, 0.3]), True)
    V["blend0.7_ridge100_default"] = (lambda s: Blend(PointRidge(100.0, "rank"), PairGBM({}, "rank", seed=s), weights=[0.7, 0.3]), True)
    for L in (3, 4, 8, 15):  # LightGBM grid on rank features, antisymmetric
        for M in (10, 40, 120):
            for N, LR in ((100, 0.05), (300, 0.05), (300, 0.02)):
                p = {**P, "num_leaves": L, "max_depth": -1, "min_child_samples": M, "n_estimators": N,
                     "learning_rate": LR}
                V[f"grid_L{L}_M{M}_N{N}_LR{LR:g}"] = (lambda s, p=p: PairGBM(p, "rank", seed=s), True)
    return V


# ---------------------------------------------------------------------------------------
# Protocol.


def pair_accuracy(p_fwd, p_bwd, y_i, y_j):
    """Mean correctness on pairs with y_i != y_j: p_fwd = P(i beats j) asked in order (i, j),
    p_bwd = P(j beats i) asked in order (j, i); each order scored, ties (p == 0.5) count 1/2."""
    win = y_i > y_j

    def score(p, w):
        return np.where(p == 0.5, 0.5, (p > 0.5) == w)

    return 0.5 * (score(p_fwd, win).mean() + score(p_bwd, ~win).mean())


def splits(n, table_seed, repeats=N_REPEATS):
    rng = np.random.default_rng([table_seed, 7919])
    n_tr = int(round(TRAIN_FRAC * n))
    for _ in range(repeats):
        perm = rng.permutation(n)
        yield np.sort(perm[:n_tr]), np.sort(perm[n_tr:])


def proxy_baseline(x_tr, y_tr, x_te, y_te):
    """Single proxy, direction ('higher better' or 'lower better') chosen by which is right more
    often on training pairs; NaN or equal proxy values count 1/2."""
    def acc(x, y, sign):
        i, j = all_pairs(len(y), both=False)
        ok = y[i] != y[j]
        dx, dy = sign * (x[i] - x[j])[ok], (y[i] - y[j])[ok]
        s = np.where(np.isnan(dx) | (dx == 0), 0.5, (dx > 0) == (dy > 0))
        return s.mean() if len(s) else np.nan
    sign = 1.0 if acc(x_tr, y_tr, 1.0) >= acc(x_tr, y_tr, -1.0) else -1.0
    return acc(x_te, y_te, sign)


def evaluate(table, proxies, configs, outcomes, names, table_seed, repeats=N_REPEATS):
    """Rows of (variant, outcome, repeat, accuracy, fit seconds)."""
    V = variants()
    num_all = table[proxies].to_numpy(float)
    cat_all = table[configs].astype(str).to_numpy() if configs else np.zeros((len(table), 0), object)
    rows = []
    for rep, (tr, te) in enumerate(splits(len(table), table_seed, repeats)):
        for out in outcomes:
            y = table[out].to_numpy(float)
            tr_o, te_o = tr[~np.isnan(y[tr])], te[~np.isnan(y[te])]
            i, j = all_pairs(len(te_o), both=False)
            yt = y[te_o]
            diff = yt[i] != yt[j]
            i, j = i[diff], j[diff]
            if len(i) == 0 or len(np.unique(y[tr_o])) < 2:
                continue
            if f"true_{out}" in table:  # ranking by the noise-free outcome: the ceiling
                tt = table[f"true_{out}"].to_numpy(float)[te_o]
                rows.append(("oracle", out, rep, pair_accuracy(tt[i] - tt[j] + 0.5, tt[j] - tt[i] + 0.5,
                                                                yt[i], yt[j]), 0.0))
            for k, p in enumerate(proxies):
                rows.append((f"proxy:{p}", out, rep, proxy_baseline(num_all[tr_o, k], y[tr_o],
                                                                 num_all[te_o, k], yt), 0.0))
            for name in names:
                factory, anti = V[name]
                t0 = time.perf_counter()
                m = factory(1000 * table_seed + rep).fit(num_all[tr_o], cat_all[tr_o], y[tr_o])
                dt = time.perf_counter() - t0
                nu, ca = num_all[te_o], cat_all[te_o]
                if anti:
                    pf = antisym(m, nu, ca, i, j)
                    pb = 1 - pf
                else:
                    pf, pb = m.pair_proba(nu, ca, i, j), m.pair_proba(nu, ca, j, i)
                rows.append((name, out, rep, pair_accuracy(pf, pb, yt[i], yt[j]), dt))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--regimes", default="calibrated")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default=",".join(MAIN_VARIANTS), help="'all' for every sweep")
    ap.add_argument("--repeats", type=int, default=N_REPEATS)
    ap.add_argument("--olmo", action="store_true", help="also the OLMo-1B sanity set")
    ap.add_argument("--csv", default=None, help="write raw per-repeat rows here")
    ap.add_argument("--report", nargs="+", default=None, help="only summarise these --csv files")
    a = ap.parse_args(argv)
    if a.report:
        report(pd.concat([pd.read_csv(f) for f in a.report], ignore_index=True))
        return
    names = list(variants()) if a.variants == "all" else a.variants.split(",")
    rows = []
    t0 = time.time()
    for regime in [r for r in a.regimes.split(",") if r]:
        for seed in [int(s) for s in a.seeds.split(",")]:
            tab = zeng_like.make_table(seed, regime, truth=True)
            for r in evaluate(tab, zeng_like.PROXIES, zeng_like.CONFIGS, zeng_like.OUTCOMES, names,
                              seed, a.repeats):
                rows.append((regime, seed) + r)
    if a.olmo:
        tab = zeng_like.load_olmo_table()
        proxies = ["base_mnli_matched", "base_paws", "base_socialiqa", "base_xsum", "log_step"]
        outs = [c for c in tab if c.startswith("ft_")]
        for r in evaluate(tab, proxies, [], outs, names, 0, max(a.repeats, 100)):
            rows.append(("olmo", 0) + r)
    df = pd.DataFrame(rows, columns=["regime", "seed", "variant", "outcome", "rep", "acc", "fit_s"])
    if a.csv:
        df.to_csv(a.csv, index=False)
    report(df)
    print(f"\n[{time.time() - t0:.0f}s]")


def report(df):
    pd.set_option("display.width", 250, "display.max_rows", 500, "display.max_columns", 50)
    acc = df.pivot_table(index="variant", columns=["regime", "outcome"], values="acc", aggfunc="mean")
    for regime in acc.columns.get_level_values(0).unique():
        sub = acc[regime].copy()
        sub["mean"] = sub.mean(axis=1)
        if "paper" in sub.index:
            sub["vs_paper"] = sub["mean"] - sub.loc["paper", "mean"]
        print(f"\n== {regime}")
        print(sub.sort_values("mean", ascending=False).round(3).to_string())
    overall = df[~df["variant"].str.startswith("proxy:")]
    per_reg = overall.pivot_table(index="variant", columns="regime", values="acc", aggfunc="mean")
    per_reg["mean_zeng"] = per_reg.drop(columns=["olmo"], errors="ignore").mean(axis=1)
    zeng = [c for c in per_reg.columns if c not in ("olmo", "mean_zeng")]
    if "paper" in per_reg.index:  # worst regime relative to the paper stand-in
        per_reg["worst_vs_paper"] = (per_reg[zeng] - per_reg.loc["paper", zeng]).min(axis=1)
    timed = overall[overall["regime"] != "olmo"]  # olmo fits are on 5 checkpoints only
    fit = (timed if len(timed) else overall).groupby("variant")["fit_s"].median()
    out = per_reg.join((1000 * fit).rename("fit_ms_median"))
    if "paper" in fit.index:
        out["fit_vs_paper"] = fit / fit["paper"]
    print("\n== summary (mean accuracy over outcomes, seeds, repeats; fit times are medians)")
    print(out.sort_values("mean_zeng", ascending=False).round(3).to_string())


if __name__ == "__main__":
    main()
