"""Load test of ``ckptsel serve``: 1, 8 and 32 concurrent clients on loopback, bounded time each.

    .venv/bin/python bench/serve_load.py [--levels 1,8,32] [--seconds 20] [--pairs 10] [--workers 1] [--json]

Builds a 200-checkpoint workspace, trains and registers ``bench`` with ``ckptsel train``, starts
``ckptsel serve --name bench@champion`` on a free 127.0.0.1 port (``--workers`` uvicorn
workers) and checks one answer against the predictor run in this process. Then, for each level,
that many threads (one keep-alive http.client connection each) POST ``--pairs``-pair
``dataframe_split`` requests for ``--seconds``. Per level: requests/s, pairs/s, p50/p99
latency and errors (a non-200, a bad body or a wrong number of predictions, or a connection
error). Zero errors expected: exit status 1 otherwise. The server's process group is killed at
the end.

RATIO: throughput (requests/s) at the highest level over that of the 1-client baseline measured
in the same run: how much concurrency buys on this machine (one worker process is one core
busy; the clients share the same cores).
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path

from _common import MODEL_NAME, base_parser, build_workspace, clean_env, emit, log, script, workdir
from serve import HOST, free_port, payload, phase, stop_server, wait_ready


def start_server(ws: Path, port: int, log_path: Path, workers: int) -> subprocess.Popen:
    cmd = [script("ckptsel"), "--workspace", str(ws), "serve", "--name", f"{MODEL_NAME}@champion",
           "--port", str(port), "--workers", str(workers)]  # binds 127.0.0.1 by default
    with open(log_path, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=clean_env(), start_new_session=True)


def check_answer(port: int, body: bytes, expected) -> None:
    """One request, compared with the in-process predictor to 1e-9."""
    import numpy as np

    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    if resp.status != 200:
        sys.exit(f"check request failed: HTTP {resp.status}: {data[:300]!r}")
    got = np.array([p["prob_a_better"] for p in json.loads(data)["predictions"]])
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=0, atol=1e-9):
        sys.exit(f"served probabilities differ from the in-process predictor: {got[:5]} vs {expected[:5]}")


def expected_for(body: bytes, predictor):
    """The in-process predictor's probabilities for a dataframe_split request body."""
    from ckptsel.payload import frames_from_columns

    split = json.loads(body)["dataframe_split"]
    columns = {c: [row[j] for row in split["data"]] for j, c in enumerate(split["columns"])}
    return predictor.predict_proba(*frames_from_columns(columns, predictor.schema_))


def main() -> int:
    parser = base_parser(" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--levels", default="1,8,32", help="comma-separated client counts (default 1,8,32)")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each level (default 20)")
    parser.add_argument("--pairs", type=int, default=10, help="pairs per request (default 10)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x.strip()]

    with workdir(args.keep) as root:
        built = build_workspace(root, n_rows=200, register=True, seed=args.seed)
        from ckptsel.predictor import PairwisePredictor
        from ckptsel.store import Store

        predictor = PairwisePredictor.load(built["ws"] / "models" / MODEL_NAME)
        with Store(built["ws"] / "ckptsel.db", create=False) as store:
            frame = store.feature_frame()
        body = payload(frame, predictor.schema_, args.pairs, args.seed)
        expected = expected_for(body, predictor)

        port = free_port()
        log_path = root / "serve.log"
        proc = start_server(built["ws"], port, log_path, workers=args.workers)
        results = {}
        try:
            ready_s = wait_ready(proc, port, log_path)
            log(f"server pid {proc.pid} ({args.workers} worker(s)) ready on {HOST}:{port} after {ready_s:.1f}s")
            check_answer(port, body, expected)
            phase(port, body, args.pairs, 2, 2.0)  # warm-up
            for clients in levels:
                log(f"level: {clients} clients x {args.seconds:g}s, {args.pairs}-pair requests ({len(body):,} bytes)")
                results[clients] = r = phase(port, body, args.pairs, clients, args.seconds)
                log(f"  {r['requests']} requests, {r['requests_per_s']} req/s, p50 {r['p50_ms']} ms, "
                    f"p99 {r['p99_ms']} ms, errors {r['errors']}")
            check_answer(port, body, expected)  # still right after the load
        finally:
            stop_server(proc)
            log(f"server process group {proc.pid} stopped")

    base, top = results[levels[0]], results[levels[-1]]
    ratio = top["requests_per_s"] / base["requests_per_s"] if base["requests_per_s"] else float("inf")
    n_errors = sum(r["errors"] for r in results.values())
    figures = {"levels": levels, "seconds": args.seconds, "pairs_per_request": args.pairs,
               "workers": args.workers, "server_ready_s": round(ready_s, 2),
               "results": {str(k): v for k, v in results.items()}, "ratio": round(ratio, 3), "errors": n_errors}
    lines = [f"ckptsel serve load, {args.pairs}-pair requests, {args.workers} worker(s), {args.seconds:g}s per level, "
             "loopback:",
             f"  {'clients':>7} {'requests':>9} {'req/s':>8} {'pairs/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"]
    for clients, r in results.items():
        lines.append(f"  {clients:>7} {r['requests']:>9} {r['requests_per_s']:>8.1f} {r['pairs_per_s']:>9.1f} "
                     f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['errors']:>6}")
        lines += [f"      e.g. {e}" for e in r["first_errors"]]
    emit(figures, lines, f"RATIO serve throughput {levels[-1]} clients / {levels[0]} client(s) = {ratio:.2f}; "
                         f"p99 at {levels[-1]} clients {top['p99_ms']:.1f} ms; errors {n_errors}", args.json)
    return 1 if n_errors else 0


if __name__ == "__main__":
    sys.exit(main())
