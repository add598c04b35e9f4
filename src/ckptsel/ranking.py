"""Using a trained predictor: compare two checkpoints, rank many.

This is the fast CLI path: it reads the store (sqlite3) and the exported predictor
(``models/<name>/``: a LightGBM model file and a JSON schema). It imports lightgbm and
numpy, never mlflow, torch, transformers or peft.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ckptsel.errors import CkptselError
from ckptsel.predictor import SCHEMA_FILE, PairwisePredictor
from ckptsel.store import Checkpoint, Store
from ckptsel.workspace import Workspace


def exported_models(ws: Workspace) -> list[str]:
    if not ws.models_dir.is_dir():
        return []
    return sorted(p.parent.name for p in ws.models_dir.glob(f"*/{SCHEMA_FILE}"))


def load_model(ws: Workspace, name: str | None = None) -> PairwisePredictor:
    """The exported predictor ``name``; without a name, the only one in the workspace."""
    if name is None:
        names = exported_models(ws)
        if not names:
            raise CkptselError(f"no trained predictor in {ws.models_dir}; train one with "
                               "`ckptsel train --target T` (see `ckptsel list --targets`)")
        if len(names) > 1:
            raise CkptselError(f"{len(names)} predictors in {ws.models_dir} ({', '.join(names)}); "
                               "choose one with --model NAME")
        name = names[0]
    directory = ws.model_dir(name)
    if not directory.is_dir():
        raise CkptselError(f"no predictor named {name!r} in {ws.models_dir} (have: "
                           f"{', '.join(exported_models(ws)) or 'none'}); train it with "
                           f"`ckptsel train --target T --name {name}`")
    return PairwisePredictor.load(directory)


def _check_features(store: Store, ckpts: Sequence[Checkpoint], model: PairwisePredictor) -> None:
    for c in ckpts:
        have = store.feature_names(c.fingerprint)
        missing = [f for f in model.schema_.names if f not in have]
        if missing:
            shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
            raise CkptselError(
                f"checkpoint {c.id!r} lacks features the model needs: {shown}; compute them with "
                f"`ckptsel indicators {c.path or c.id} --spec SPEC` or import them with `ckptsel import-table`"
            )


def predict_pair(ws: Workspace, ref_a: str, ref_b: str, *, model: str | None = None, n_reasons: int = 3) -> dict:
    """P(A fine-tunes better than B), the decision, and the features that pushed hardest."""
    predictor = load_model(ws, model)
    with Store(ws.db_path, create=False) as store:
        a, b = store.get_checkpoint(ref_a), store.get_checkpoint(ref_b)
        _check_features(store, [a, b], predictor)
        fa, fb = store.feature_frame([a.id]), store.feature_frame([b.id])
    prob = float(predictor.predict_proba(fa, fb)[0])
    decision = a.id if prob > 0.5 else b.id if prob < 0.5 else "tie"
    return {"a": a.id, "b": b.id, "model": predictor.meta_.get("name"), "target": predictor.meta_.get("target"),
            "prob_a_better": prob, "decision": decision,
            "reasons": predictor.explain(fa, fb)[:n_reasons]}


def format_pair(result: dict) -> str:
    lines = [f"P({result['a']} fine-tunes better than {result['b']}) = {result['prob_a_better']:.3f}"
             + (f"   [target {result['target']}]" if result.get("target") else ""),
             f"decision: {result['decision']}" + ("" if result["decision"] == "tie" else " fine-tunes better"),
             "reasons (contribution to the log-odds of A > B; + favours A):"]
    for r in result["reasons"]:
        lines.append(f"  {r['contribution']:+.3f}  {r['feature']}  (A: {_fmt(r['a'])}, B: {_fmt(r['b'])})")
    return "\n".join(lines)


def _fmt(v) -> str:
    return "missing" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def expected_wins(prob: np.ndarray) -> np.ndarray:
    """Borda count: the expected number of wins against every other candidate, sum_j P[i, j]."""
    return prob.sum(axis=1) - np.diag(prob)


def bradley_terry(prob: np.ndarray, iters: int = 1000, tol: float = 1e-10) -> np.ndarray:
    """Log-strengths of a Bradley-Terry fit to soft win counts P[i, j] (Hunter's MM algorithm,
    "MM algorithms for generalized Bradley-Terry models", Ann. Statist. 2004, eq. 3), centred at 0."""
    n = len(prob)
    wins = expected_wins(prob)
    s = np.ones(n)
    off_diag = ~np.eye(n, dtype=bool)
    for _ in range(iters):
        denom = np.where(off_diag, 1.0 / (s[:, None] + s[None, :]), 0.0).sum(axis=1)
        new = np.maximum(wins, 1e-12) / denom
        new /= np.exp(np.mean(np.log(new)))
        if np.max(np.abs(new - s)) < tol:
            s = new
            break
        s = new
    return np.log(s)


def rank(ws: Workspace, refs: Sequence[str] | None = None, *, model: str | None = None,
         top: int | None = None, method: str = "borda") -> dict:
    """Score every pair of candidates in one batch and rank them, best first."""
    predictor = load_model(ws, model)
    with Store(ws.db_path, create=False) as store:
        ckpts = [store.get_checkpoint(r) for r in refs] if refs else store.checkpoints()
        ckpts = list({c.id: c for c in ckpts}.values())
        if len(ckpts) < 2:
            raise CkptselError(f"ranking needs at least two checkpoints; got {len(ckpts)}")
        _check_features(store, ckpts, predictor)
        frame = store.feature_frame([c.id for c in ckpts])
    return rank_frame(predictor, frame, ckpts, top=top, method=method)


def rank_frame(predictor: PairwisePredictor, frame, ckpts: Sequence[Checkpoint] | None = None, *,
               top: int | None = None, method: str = "borda") -> dict:
    prob = predictor.compare_all(frame)
    wins = expected_wins(prob)
    bt = bradley_terry(prob) if method == "bradley-terry" else None
    score = bt if bt is not None else wins
    order = np.argsort(-score, kind="stable")
    meta = {c.id: c for c in ckpts} if ckpts else {}
    candidates = []
    for rank_, i in enumerate(order[: top or len(order)], start=1):
        cid = frame.ids[i]
        row = {"id": cid, "rank": rank_, "expected_wins": float(wins[i]),
               "win_rate": float(wins[i] / (len(frame) - 1))}
        if bt is not None:
            row["bt_log_strength"] = float(bt[i])
        if cid in meta:
            row["run"], row["step"] = meta[cid].run, meta[cid].step
        candidates.append(row)
    return {"model": predictor.meta_.get("name"), "target": predictor.meta_.get("target"), "method": method,
            "n_candidates": len(frame), "candidates": candidates}


def format_rank(result: dict) -> str:
    lines = [f"model {result['model']} (target {result['target']}), {result['n_candidates']} candidates, "
             f"{result['method']}", f"{'rank':>4}  {'expected wins':>13}  {'win rate':>8}  id"]
    for c in result["candidates"]:
        lines.append(f"{c['rank']:>4}  {c['expected_wins']:>13.2f}  {c['win_rate']:>8.3f}  {c['id']}")
    return "\n".join(lines)
