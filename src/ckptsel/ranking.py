"""Using a trained predictor: compare two checkpoints, rank many.

This is the fast CLI path: it reads the store (sqlite3) and the exported predictor
(``models/<name>/``: a LightGBM model file and a JSON schema). It imports lightgbm and
numpy, never mlflow, torch, transformers or peft.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ckptsel.errors import CkptselError
from ckptsel.predictor import PairwisePredictor
from ckptsel.store import Checkpoint, Store
from ckptsel.workspace import Workspace


def exported_models(ws: Workspace) -> list[str]:
    from ckptsel import exports

    return exports.names(ws)


def load_model(ws: Workspace, ref: str | None = None) -> PairwisePredictor:
    """The exported predictor ``ref`` means (``NAME``, ``NAME@ALIAS``, ``NAME/VERSION``; see
    :mod:`ckptsel.exports`); without one, the only model in the workspace. ``meta_["version"]``
    and ``meta_["alias"]`` say which version it is."""
    from ckptsel import exports

    found = exports.resolve(ws, ref)
    predictor = PairwisePredictor.load(found.directory)
    predictor.meta_ = {**predictor.meta_, "name": found.name, "version": found.version, "alias": found.alias}
    return predictor


def missing_features(store: Store, ckpt: Checkpoint, model: PairwisePredictor) -> str | None:
    """Why ``ckpt`` cannot be scored by ``model`` (one line naming the feature, the spec the
    model was trained on and the command that computes it), or None when it can."""
    specs = model.schema_.specs
    have = {(v["name"], v["spec"]) for v in store.feature_values(ckpt.fingerprint)}
    names_here = {n for n, _ in have}
    if not specs:  # a model exported before ckptsel recorded specs: by name only
        missing = [f for f in model.schema_.names if f not in names_here]
        spec = None
    else:
        missing = [f for f in model.schema_.names if (f, specs.get(f)) not in have]
        spec = specs.get(missing[0]) if missing else None
    if not missing:
        return None
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    if spec is None:
        return (f"checkpoint {ckpt.id!r} lacks features the model needs: {shown}; compute them with "
                f"`ckptsel indicators {ckpt.path or ckpt.id} --spec SPEC` or import them with `ckptsel import-table`")
    info = {**(model.meta_.get("spec_info") or {}).get(spec, {}), **_known(store.spec_info(spec))}
    what = ", ".join(str(info[k]) for k in ("name", "dtype") if info.get(k)) or "spec unknown to this store"
    command = str(info.get("command") or "ckptsel indicators {ckpt} --spec SPEC").replace("{ckpt}", ckpt.path or ckpt.id)
    others = sorted({sid for n, sid in have if n == missing[0]})
    other = f" (it has {missing[0]} under spec {', '.join(others)} only, which the model was not trained on)" \
        if others else ""
    return (f"checkpoint {ckpt.id!r} lacks {shown} under the spec the model was trained on, "
            f"{spec} ({what}){other}; compute it with `{command}`")


def _known(info: dict) -> dict:
    return {} if info.get("kind") == "unknown" else info


def _read_frame(store: Store, ckpts: Sequence[Checkpoint], model: PairwisePredictor):
    """The model's features of ``ckpts``, each from the spec the model was trained on."""
    specs = model.schema_.specs
    frame = store.feature_frame([c.id for c in ckpts], specs=specs or None)
    if not specs and frame.spec_choices:  # an old export: say so instead of reading a mix
        name = sorted(frame.spec_choices)[0]
        raise CkptselError(f"model {model.meta_.get('name')!r} was exported before ckptsel recorded the spec of "
                           f"each feature, and {name} has values under {len(frame.spec_choices[name])} specs here; "
                           f"retrain it with `ckptsel train --target {model.meta_.get('target')} "
                           f"--name {model.meta_.get('name')}`")
    return frame


def predict_pair(ws: Workspace, ref_a: str, ref_b: str, *, model: str | None = None, n_reasons: int = 3) -> dict:
    """P(A fine-tunes better than B), the decision, and the features that pushed hardest."""
    predictor = load_model(ws, model)
    with Store(ws.db_path, create=False) as store:
        a, b = store.get_checkpoint(ref_a), store.get_checkpoint(ref_b)
        for c in (a, b):
            if (why := missing_features(store, c, predictor)) is not None:
                raise CkptselError(why)
        fa, fb = _read_frame(store, [a], predictor), _read_frame(store, [b], predictor)
    prob = float(predictor.predict_proba(fa, fb)[0])
    decision = a.id if prob > 0.5 else b.id if prob < 0.5 else "tie"
    return {"a": a.id, "b": b.id, "model": predictor.meta_.get("name"), "version": predictor.meta_.get("version"),
            "target": predictor.meta_.get("target"), "prob_a_better": prob, "decision": decision,
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
         top: int | None = None, method: str = "borda", strict: bool = False) -> dict:
    """Score every pair of candidates in one batch and rank them, best first.

    Candidates that lack a feature of the model (under the spec it was trained on) are left
    out and listed under ``skipped`` with the command that computes what they lack;
    ``strict`` refuses the whole ranking instead."""
    predictor = load_model(ws, model)
    with Store(ws.db_path, create=False) as store:
        ckpts = [store.get_checkpoint(r) for r in refs] if refs else store.checkpoints()
        ckpts = list({c.id: c for c in ckpts}.values())
        why = {c.id: w for c in ckpts if (w := missing_features(store, c, predictor)) is not None}
        if why and strict:
            raise CkptselError(next(iter(why.values())) + (f" ({len(why) - 1} more candidates lack features; "
                                                           "leave out --strict to rank the others)" if len(why) > 1 else ""))
        ranked = [c for c in ckpts if c.id not in why]
        if len(ranked) < 2:
            reason = f"; {next(iter(why.values()))}" if why else ""
            raise CkptselError(f"ranking needs at least two checkpoints with the model's features; got {len(ranked)} "
                               f"of {len(ckpts)}{reason}")
        frame = _read_frame(store, ranked, predictor)
    result = rank_frame(predictor, frame, ranked, top=top, method=method)
    result["skipped"] = [{"id": cid, "reason": w} for cid, w in why.items()]
    return result


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
    return {"model": predictor.meta_.get("name"), "version": predictor.meta_.get("version"),
            "target": predictor.meta_.get("target"), "method": method,
            "n_candidates": len(frame), "candidates": candidates}


def format_rank(result: dict) -> str:
    version = f" version {result['version']}" if result.get("version") else ""
    lines = [f"model {result['model']}{version} (target {result['target']}), {result['n_candidates']} candidates, "
             f"{result['method']}", f"{'rank':>4}  {'expected wins':>13}  {'win rate':>8}  id"]
    for c in result["candidates"]:
        lines.append(f"{c['rank']:>4}  {c['expected_wins']:>13.2f}  {c['win_rate']:>8.3f}  {c['id']}")
    skipped = result.get("skipped") or []
    if skipped:
        lines.append(f"not ranked ({len(skipped)}): lacking features of the model")
        lines += [f"  {s['reason']}" for s in skipped]
    return "\n".join(lines)
