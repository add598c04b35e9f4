"""Ranking 1,000 candidates (999,000 ordered pairs) relative to the bare LightGBM prediction.

    .venv/bin/python bench/rank.py [--n 1000] [--repeats 4] [--profile] [--json]

Builds a store with N checkpoints (80 of them labelled, the predictor is trained on those), loads
the exported predictor and the store's feature frame, builds the pair matrix M of all ordered
pairs once (``pair_matrix`` + ``ordered_pairs``, float32 as ``compare_all`` uses) outside the
timed region, then times, interleaved, ``--repeats`` times each:

    baseline        predictor.booster_.predict(M)                       (bare, LightGBM defaults)
    baseline_1t     booster_.predict(M, raw_score=True, num_threads=n_jobs) (what compare_all calls)
    rank_frame      ckptsel.ranking.rank_frame(predictor, frame)         (all in-process work)
    rank_ws         ckptsel.ranking.rank(ws, None)                       (+ model load + store read)

Prints medians and RATIO rank_frame/baseline (target <= 2). When over target, or with
--profile, it also profiles one rank_frame and one rank(ws) call with cProfile.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import sys
import time

from _common import base_parser, build_workspace, emit, log, median, workdir

TARGET_RATIO = 2.0


def profile(label: str, fn) -> str:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).strip_dirs().sort_stats("tottime")
    stats.print_stats(12)
    text = buf.getvalue()
    start = text.find("   ncalls")
    return f"--- cProfile {label} (by tottime) ---\n" + text[start if start >= 0 else 0:].rstrip()


def check(result: dict, n: int) -> None:
    """rank_frame ranked every candidate and the expected wins sum to n(n-1)/2."""
    if result["n_candidates"] != n or len(result["candidates"]) != n:
        sys.exit(f"rank_frame returned {result['n_candidates']} candidates, expected {n}")
    wins = sum(c["expected_wins"] for c in result["candidates"])
    if abs(wins - n * (n - 1) / 2) > 1e-6 * n * n:
        sys.exit(f"expected wins sum to {wins}, not n(n-1)/2 = {n * (n - 1) / 2}")


def main() -> int:
    parser = base_parser(" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--n", type=int, default=1000, help="candidates (default 1000)")
    parser.add_argument("--labelled", type=int, default=80, help="labelled checkpoints to train on (default 80)")
    parser.add_argument("--repeats", type=int, default=4, help="timed repeats of each (default 4)")
    parser.add_argument("--profile", action="store_true", help="cProfile rank_frame and rank(ws) even within target")
    args = parser.parse_args()

    with workdir(args.keep) as root:
        built = build_workspace(root, n_rows=args.n, n_labelled=args.labelled, seed=args.seed)

        import numpy as np

        from ckptsel.predictor import ordered_pairs, pair_matrix
        from ckptsel.ranking import load_model, rank, rank_frame
        from ckptsel.store import Store
        from ckptsel.workspace import Workspace

        ws = Workspace.resolve(built["ws"])
        predictor = load_model(ws)
        with Store(ws.db_path, create=False) as store:
            frame = store.feature_frame()
        if len(frame) != args.n:
            sys.exit(f"expected {args.n} checkpoints in the frame, got {len(frame)}")
        q, cat, _ = predictor._transform(frame)  # the model's quantile features, as compare_all builds them
        ia, ib = ordered_pairs(len(frame))
        M = pair_matrix(q, cat, ia, ib)
        booster, n_jobs = predictor.booster_, predictor.n_jobs
        log(f"pair matrix {M.shape[0]:,} x {M.shape[1]} {M.dtype}, {booster.num_trees()} trees, "
            f"predictor n_jobs={n_jobs}, cpus={os.cpu_count()}")

        cases = {
            "baseline": lambda: booster.predict(M),
            "baseline_1t": lambda: booster.predict(M, raw_score=True, num_threads=n_jobs),
            "rank_frame": lambda: rank_frame(predictor, frame),
            "rank_ws": lambda: rank(ws, None),
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        names = list(cases)
        for r in range(args.repeats):  # no warm-up: nothing here caches; the order alternates
            for key in (names if r % 2 == 0 else names[::-1]):
                started = time.perf_counter()
                out = cases[key]()
                times[key].append(time.perf_counter() - started)
                if key == "rank_frame" and r == 0:
                    check(out, args.n)
                del out
            log(f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()))

        med = {k: median(v) for k, v in times.items()}
        ratio = med["rank_frame"] / med["baseline"]
        ratio_ws = med["rank_ws"] / med["baseline"]
        ratio_1t = med["rank_frame"] / med["baseline_1t"]
        profiles = []
        if ratio > TARGET_RATIO or args.profile:
            profiles.append(profile("rank_frame(predictor, frame)", cases["rank_frame"]))
            profiles.append(profile("rank(ws, None)", cases["rank_ws"]))

    figures = {
        "n_candidates": args.n, "n_pairs": int(len(ia)), "repeats": args.repeats,
        "times_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "ratio": round(ratio, 3), "ratio_rank_ws": round(ratio_ws, 3), "ratio_vs_single_thread_baseline": round(ratio_1t, 3),
        "target": TARGET_RATIO, "within_target": ratio <= TARGET_RATIO, "profiles": profiles,
    }
    lines = [
        f"{args.n} candidates, {len(ia):,} ordered pairs, medians of {args.repeats}:",
        f"  baseline    booster_.predict(M)                         {med['baseline']:.3f}s",
        f"  baseline_1t booster_.predict(M, raw, num_threads={n_jobs})     {med['baseline_1t']:.3f}s",
        f"  rank_frame  ranking.rank_frame(predictor, frame)        {med['rank_frame']:.3f}s",
        f"  rank_ws     ranking.rank(ws, None) incl. load + store   {med['rank_ws']:.3f}s",
        f"rank(ws)/baseline = {ratio_ws:.2f}; rank_frame/baseline_1t = {ratio_1t:.2f}",
        *profiles,
    ]
    emit(figures, lines, f"RATIO rank_frame/booster_predict = {ratio:.2f} (target <= {TARGET_RATIO:g})", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
