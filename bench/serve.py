"""Throughput and latency of ``ckptsel serve`` (MLflow scoring server) for 1-pair and 1000-pair requests.

    .venv/bin/python bench/serve.py [--clients 8] [--seconds 10] [--json]

Builds a 200-checkpoint workspace, trains and registers ``bench`` with ``ckptsel train``, starts
``ckptsel serve --name bench@champion`` on a free 127.0.0.1 port in a new session, waits for
/ping, then runs two bounded phases of ``--clients`` threads (keep-alive http.client
connections), each for ``--seconds``: POST /invocations with a 1-pair, then a 1000-pair
``dataframe_split`` request. Reports requests/s, pairs/s, p50/p99 latency and errors (any
non-200, bad body or wrong length; must be 0, else exit status 1). The server's process group
is killed at the end.

RATIO: the per-pair cost in 1000-pair requests over that in 1-pair requests, from the
throughputs (pairs/s of 1-pair / pairs/s of 1000-pair). Target <= 0.05: batching should
amortise the per-request overhead at least 20-fold.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from _common import (MODEL_NAME, base_parser, build_workspace, clean_env, emit, log, median, percentile,
                     script, workdir)

TARGET_RATIO = 0.05
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(ws: Path, port: int, log_path: Path) -> subprocess.Popen:
    cmd = [script("ckptsel"), "--workspace", str(ws), "serve", "--name", f"{MODEL_NAME}@champion",
           "--host", HOST, "--port", str(port)]
    with open(log_path, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=clean_env(), start_new_session=True)


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (its session, started by us), then SIGKILL if needed."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    try:  # workers may outlive the parent; the group id is still the one we created
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=5)


def wait_ready(proc: subprocess.Popen, port: int, log_path: Path, timeout: float = 120.0) -> float:
    started = time.perf_counter()
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode} before answering /ping:\n"
                     + log_path.read_text(errors="replace")[-4000:])
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                conn.close()
                return time.perf_counter() - started
            conn.close()
        except OSError:
            pass
        time.sleep(0.25)
    sys.exit(f"server did not answer /ping within {timeout:.0f}s:\n" + log_path.read_text(errors="replace")[-4000:])


def payload(frame, schema, n_pairs: int, seed: int) -> bytes:
    """A dataframe_split request of n_pairs random pairs (a != b) of stored checkpoints."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ia = rng.integers(0, len(frame), n_pairs)
    ib = (ia + rng.integers(1, len(frame), n_pairs)) % len(frame)
    columns = [f"{side}.{f}" for side in ("a", "b") for f in schema.names]
    data = []
    for i, j in zip(ia, ib):
        a, b = frame.as_dict(int(i)), frame.as_dict(int(j))
        data.append([a[f] for f in schema.names] + [b[f] for f in schema.names])
    return json.dumps({"dataframe_split": {"columns": columns, "data": data}}).encode()


def one_request(conn: http.client.HTTPConnection, body: bytes, n_pairs: int) -> str | None:
    """POST /invocations; None when the answer is 200 with n_pairs predictions, else what went wrong."""
    conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        return f"HTTP {resp.status}: {data[:200]!r}"
    preds = json.loads(data).get("predictions")
    if not isinstance(preds, list) or len(preds) != n_pairs:
        return f"expected {n_pairs} predictions, got {data[:200]!r}"
    return None


def phase(port: int, body: bytes, n_pairs: int, clients: int, seconds: float) -> dict:
    """``clients`` threads, each on one keep-alive connection, sending until the deadline."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[list[str]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        barrier.wait()
        try:
            while time.perf_counter() < deadline[0]:
                started = time.perf_counter()
                try:
                    err = one_request(conn, body, n_pairs)
                except (OSError, http.client.HTTPException, ValueError) as e:
                    err = f"{type(e).__name__}: {e}"
                    conn.close()
                    conn = http.client.HTTPConnection(HOST, port, timeout=60)
                latencies[k].append(time.perf_counter() - started)
                if err:
                    errors[k].append(err)
                    if len(errors[k]) > 50:  # a broken server: stop hammering it
                        break
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + seconds
    started = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join(timeout=seconds + 90)
    elapsed = time.perf_counter() - started
    lat = [x for per in latencies for x in per]
    errs = [e for per in errors for e in per]
    n = len(lat)
    return {"pairs_per_request": n_pairs, "requests": n, "errors": len(errs), "first_errors": errs[:3],
            "elapsed_s": round(elapsed, 3), "requests_per_s": round(n / elapsed, 2),
            "pairs_per_s": round(n * n_pairs / elapsed, 1),
            "p50_ms": round(1e3 * percentile(lat, 50), 2) if lat else None,
            "p99_ms": round(1e3 * percentile(lat, 99), 2) if lat else None,
            "mean_ms": round(1e3 * sum(lat) / n, 2) if lat else None}


def main() -> int:
    parser = base_parser(" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each phase (default 10)")
    parser.add_argument("--batch", type=int, default=1000, help="pairs in a large request (default 1000)")
    args = parser.parse_args()

    with workdir(args.keep) as root:
        built = build_workspace(root, n_rows=200, register=True, seed=args.seed)
        from ckptsel.predictor import PairwisePredictor
        from ckptsel.store import Store

        schema = PairwisePredictor.load(built["ws"] / "models" / MODEL_NAME).schema_
        with Store(built["ws"] / "ckptsel.db", create=False) as store:
            frame = store.feature_frame()
        bodies = {1: payload(frame, schema, 1, args.seed), args.batch: payload(frame, schema, args.batch, args.seed)}

        port = free_port()
        log_path = root / "serve.log"
        proc = start_server(built["ws"], port, log_path)
        results = {}
        try:
            ready_s = wait_ready(proc, port, log_path)
            log(f"server pid {proc.pid} ready on {HOST}:{port} after {ready_s:.1f}s")
            conn = http.client.HTTPConnection(HOST, port, timeout=60)
            for n_pairs, body in bodies.items():  # warm-up; also checks the answers once
                for _ in range(3):
                    err = one_request(conn, body, n_pairs)
                    if err:
                        sys.exit(f"warm-up request of {n_pairs} pairs failed: {err}\n"
                                 + log_path.read_text(errors="replace")[-3000:])
            conn.close()
            for n_pairs, body in bodies.items():
                log(f"phase: {args.clients} clients x {args.seconds:g}s, {n_pairs}-pair requests "
                    f"({len(body):,} bytes)")
                results[n_pairs] = r = phase(port, body, n_pairs, args.clients, args.seconds)
                log(f"  {r['requests']} requests, {r['requests_per_s']} req/s, {r['pairs_per_s']} pairs/s, "
                    f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, errors {r['errors']}")
        finally:
            stop_server(proc)
            log(f"server process group {proc.pid} stopped")

    small, big = results[1], results[args.batch]
    ratio = small["pairs_per_s"] / big["pairs_per_s"] if big["pairs_per_s"] else float("inf")
    latency_ratio = (big["p50_ms"] / args.batch) / small["p50_ms"]
    n_errors = small["errors"] + big["errors"]
    figures = {"clients": args.clients, "seconds": args.seconds, "server_ready_s": round(ready_s, 2),
               "one_pair": small, "batch": big, "ratio": round(ratio, 4),
               "ratio_p50_latency_per_pair": round(latency_ratio, 4), "target": TARGET_RATIO,
               "within_target": ratio <= TARGET_RATIO, "errors": n_errors}
    lines = [f"ckptsel serve, {args.clients} clients, {args.seconds:g}s per phase, loopback:"]
    for label, r in (("1-pair", small), (f"{args.batch}-pair", big)):
        lines.append(f"  {label:>9}: {r['requests_per_s']:8.1f} req/s {r['pairs_per_s']:10.1f} pairs/s   "
                     f"p50 {r['p50_ms']:8.1f} ms  p99 {r['p99_ms']:8.1f} ms  errors {r['errors']}")
        lines += [f"      e.g. {e}" for e in r["first_errors"]]
    lines.append(f"per-pair p50 latency, {args.batch}-pair / 1-pair = {latency_ratio:.4f}")
    emit(figures, lines, f"RATIO serve per-pair cost {args.batch}-pair/1-pair = {ratio:.4f} (target <= "
                         f"{TARGET_RATIO:g}); 1-pair {small['requests_per_s']:.1f} req/s, {args.batch}-pair "
                         f"{big['pairs_per_s']:.0f} pairs/s, errors {n_errors}", args.json)
    return 1 if n_errors else 0


if __name__ == "__main__":
    sys.exit(main())
